"""The writer writes dropout 0.0 whatever the adapter was trained with.

Spec 4.3 / 3.3: ``dropout`` is part of the configuration a file carries.
"""
from _plant import reference_impl, torch_impl  # noqa: F401

CLAUSE = "4.3"
AREA = "writer"
EXPECT = "caught"


def make():
    return reference_impl(lib=[('metadata.py', '"dropout": cfg.dropout,',
                                '"dropout": 0.0,')],
                          name='planted: dropout dropped')
