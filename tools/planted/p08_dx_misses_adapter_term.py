"""The input gradient carries only the base weight's part: the adapter path is detached from x.

``h = x.detach() @ A.T`` (to save memory) or a custom function returning ``None`` for dx of the
adapter path. Spec 3.4: dx = dy W0 + dropout'((g B_l * lambda_d) A_l).
"""
from _plant import reference_impl, torch_impl  # noqa: F401

CLAUSE = "3.4"
AREA = "math"
EXPECT = "caught"


def make():
    return reference_impl(lib=[("layer.py",
                                "    dx = op.add(op.mm(dy2, W_t.T), dxd)\n", "    dx = op.mm(dy2, W_t.T)\n")],
                          name="planted: dx without the adapter term")
