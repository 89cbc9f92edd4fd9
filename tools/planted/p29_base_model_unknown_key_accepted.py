"""The reader accepts a ``base_model`` object with keys other than name/revision/fingerprint.

Spec 4.6 step 20 (E4.6.20.4).
"""
from _plant import reference_impl, torch_impl  # noqa: F401

CLAUSE = "4.6 step 20"
AREA = "reader"
EXPECT = "caught"


def make():
    return reference_impl(lib=[('metadata.py', 'fail("E4.6.20.4"',
                                '(lambda *a, **k: None)("E4.6.20.4"')],
                          name='planted: unknown base_model keys accepted')
