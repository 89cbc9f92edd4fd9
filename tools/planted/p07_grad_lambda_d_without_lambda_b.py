"""The hand-written backward forgets lambda_b in the chain rule: g = dy instead of dy * lambda_b.

Custom autograd functions (written for speed or memory) get one factor wrong. Spec 3.4:
d lambda_d = sum_N ((dy * lambda_b) B_l) * h, and dx gets the same factor.
"""
from _plant import reference_impl, torch_impl  # noqa: F401

CLAUSE = "3.4"
AREA = "math"
EXPECT = "caught"


def make():
    return reference_impl(lib=[("layer.py", "    g = op.mul(dy2, lb)  # (N, out)\n", "    g = dy2  # (N, out)\n")],
                          name="planted: backward without lambda_b in g")
