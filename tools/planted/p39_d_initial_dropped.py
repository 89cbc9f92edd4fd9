"""The writer writes the default ``d_initial`` (0.1) instead of the adapter's.

Spec 4.3 / 3.9: d_initial is the initial lambda_d the adapter was trained from.
"""
from _plant import reference_impl, torch_impl  # noqa: F401

CLAUSE = "4.3"
AREA = "writer"
EXPECT = "caught"


def make():
    return reference_impl(lib=[('metadata.py', '"d_initial": cfg.d_initial,',
                                '"d_initial": 0.1,')],
                          name='planted: d_initial dropped')
