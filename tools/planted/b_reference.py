"""Baseline, not a bug: the shipped reference (impls/reference.py on vera_ref), through the same
copy-and-import path as the planted bugs. A check that fails here is a failure of the kit or of the
shipped implementation, never evidence against a planted bug: the tally counts a bug as caught only
by checks that pass on its baseline."""
from _plant import reference_impl

CLAUSE = "-"
AREA = "baseline"
EXPECT = "pass"


def make():
    return reference_impl(name="baseline: shipped reference, copied")
