"""Unmerge subtracts a Delta W built from the initial lambda_d (d_initial = 0.1), cached when the
layer was created, instead of the current vectors.

Spec 3.6: W0 = W - Delta W with the vectors the merge used.
"""
from _plant import reference_impl, torch_impl  # noqa: F401

CLAUSE = "3.6"
AREA = "math"
EXPECT = "caught"


def make():
    return reference_impl(lib=[("layer.py",
                                "    dW = delta_weight(A, B, lambda_d, lambda_b, in_f, out_f, layout=layout, "
                                "dtype=dtype)\n",
                                "    dW = delta_weight(A, B, np.full_like(lambda_d, 0.1), lambda_b, in_f, out_f, "
                                "layout=layout,"
                                " dtype=dtype)\n")],
                          name="planted: unmerge with the initial lambda_d")
