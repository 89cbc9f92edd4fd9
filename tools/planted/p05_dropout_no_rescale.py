"""Dropout multiplies by the mask but forgets the 1 / (1 - p) rescale.

A hand-written mask (``x * mask``) instead of the framework's dropout. Spec 3.3:
dropout(x) = x * mask / (1 - p).
"""
from _plant import reference_impl, torch_impl  # noqa: F401

CLAUSE = "3.3"
AREA = "math"
EXPECT = "caught"


def make():
    return reference_impl(lib=[("layer.py",
                                "return x * (np.asarray(mask, dtype=x.dtype) / x.dtype.type(1.0 - dropout))",
                                "return x * np.asarray(mask, dtype=x.dtype)")],
                          name="planted: dropout without 1/(1-p)")
