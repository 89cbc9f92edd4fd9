"""Words are mapped to floats without the odd-grid offset: s = 2 * (u >> 8) - (2^24 - 1) becomes
s = 2 * (u >> 8) - 2^24 (the "+1" dropped), so values can be exactly -bound and never bound.

Spec 1.5: s = 2 m24 + 1 - 2^24.
"""
from _plant import reference_impl, torch_impl  # noqa: F401

CLAUSE = "1.5"
AREA = "generator"
EXPECT = "caught"


def make():
    return reference_impl(lib=[("projection.py", "    v |= np.int32(1)\n", "")],
                          name="planted: even grid (no +1)")
