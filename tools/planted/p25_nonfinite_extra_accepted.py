"""The reader checks VeRA vectors for NaN/inf but not the extra tensors (a task head).

Spec 4.6 step 25: every expected tensor, extra tensors included, must be finite (E4.6.25.1).
"""
from _plant import reference_impl, torch_impl  # noqa: F401

CLAUSE = "4.6 step 25"
AREA = "reader"
EXPECT = "caught"


def make():
    return reference_impl(lib=[('adapter.py', '        if not all_finite(raw.data):  # step 25',
                                '        if name not in cfg.extra_tensors and not all_finite(raw.data):  # step 25')],
                          name='planted: extra tensors not checked for NaN/inf')
