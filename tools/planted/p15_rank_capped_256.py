"""The adapter path keeps at most 256 ranks (a kernel's shared-memory tile): lambda_d * h beyond rank
256 never reaches the output.

Spec 3.2 sums over all r ranks. The paper uses r up to 1024. Visible only when r > 256.
"""
from _plant import reference_impl, torch_impl  # noqa: F401

CLAUSE = "3.2"
AREA = "size"
EXPECT = "caught"


def make():
    return reference_impl(lib=[("layer.py", "    v = op.mm(op.mul(h, ld), B_l.T)  # (..., out)\n",
                                "    v = op.mm(op.mul(h, ld)[..., :256], B_l.T[:256])  # (..., out)\n")],
                          name="planted: rank capped at 256 in the forward")
