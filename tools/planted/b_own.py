"""Baseline, not a bug: ``_own.OwnGenerator``, the conforming own-generator implementation the
own-generator bugs (p21, p22) change one method of (see b_reference.py)."""
from _own import OwnGenerator

CLAUSE = "-"
AREA = "baseline"
EXPECT = "pass"
make = OwnGenerator
