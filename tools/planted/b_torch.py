"""Baseline, not a bug: the shipped vera_torch wrapper (impls/torch_impl.py) through the same
copy-and-import path as the planted vera_torch bugs (see b_reference.py)."""
from _plant import torch_impl

CLAUSE = "-"
AREA = "baseline"
EXPECT = "pass"


def make():
    return torch_impl(name="baseline: shipped vera_torch, copied")
