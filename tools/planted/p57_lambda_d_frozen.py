"""lambda_d is never updated: the training step registers only lambda_b with the optimizer (an
optimizer built from ``[p for n, p in named_parameters() if "lambda_b" in n]``, or lambda_d created
with ``requires_grad=False`` as in an ablation of the paper left switched on).

Spec 3.4 / 5.3 level T: both vectors are trained, lambda_d (r) and lambda_b (out) of every layer.
"""
from _plant import reference_impl

CLAUSE = "3.4"
AREA = "training"
EXPECT = "caught"


def make():
    return reference_impl(impl=[("            ld = round_to(ld - lr * g.lambda_d, c.dtype).astype(np.float64)\n",
                                 "            pass  # planted: lambda_d is not in the optimizer\n")],
                          name="planted: lambda_d never trained")
