"""In float16/bfloat16 the vector gradients are summed over the batch in the dtype, row by row (as
``param.grad += row_grad`` in a low-precision gradient buffer).

Spec 5.2.3: sums accumulated in binary32 or wider; d lambda_d and d lambda_b are sums over N.
"""
from _plant import reference_impl, torch_impl  # noqa: F401

CLAUSE = "5.2.3"
AREA = "numerics"
EXPECT = "caught"
WHY_ESCAPES = ("The only sums over the batch (d lambda_b, d lambda_d: sum over N rows) run in the layer cases, "
               "N <= 128 rows of random-sign products, where a dtype accumulator's error stays inside the "
               "bound; numerics builds one-sign sums over in, r and out, never over N. Missing check: a "
               "one-sign sum over a long batch (N >= 2048 rows, dy * v and (g B_l) * h of one sign) in "
               "float16/bfloat16 for the backward")


def make():
    return reference_impl(lib=[("layer.py",
                                "    d_lambda_b = op.cast(np.sum(op.mul(dy2, v), axis=0, dtype=np.float64 if "
                                "op.exact else np.float32))\n",
                                "    prods = op.mul(dy2, v)\n"
                                "    d_lambda_b = prods[0]\n"
                                "    for row in prods[1:]:  # planted: the batch sum in the dtype\n"
                                "        d_lambda_b = op.add(d_lambda_b, row)\n")],
                          name="planted: d lambda_b summed in the dtype")
