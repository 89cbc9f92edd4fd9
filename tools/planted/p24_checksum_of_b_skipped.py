"""The reader verifies the checksum of A but not of B (a loop over ("A",) left from a first draft).

Spec 4.6 step 26: every projection the file's checksums cover is compared, A and B of each group
(E4.6.26.1).
"""
from _plant import reference_impl, torch_impl  # noqa: F401

CLAUSE = "4.6 step 26"
AREA = "reader"
EXPECT = "caught"


def make():
    return reference_impl(lib=[('adapter.py', 'for k in ("A", "B"):\n                if want[k] != got[k]:',
                                'for k in ("A",):\n                if want[k] != got[k]:')],
                          name='planted: checksum of B not verified')
