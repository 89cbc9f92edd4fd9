"""LoRA habit: the adapter term is multiplied by alpha / r (alpha = 8) without declaring it.

A LoRA author porting to VeRA keeps ``scaling = alpha / r`` on the adapter path. VeRA has no
such factor (spec 3.2: y = x W0^T + b + lambda_b * ((lambda_d * (x A_l^T)) B_l^T)); an
implementation may only carry one as the declared deviation ``adapter_scale``.
"""
from _plant import reference_impl

CLAUSE = "3.2"
AREA = "math"
EXPECT = "caught"


def make():
    return reference_impl(lib=[("layer.py", "    return op.add(base, op.mul(v, lb))\n",
                                "    return op.add(base, op.cast(op.mul(v, lb) * (8.0 / A.shape[0])))\n")],
                          name="planted: adapter term times alpha/r")
