"""In float16/bfloat16 the vector gradients are summed over the batch in the dtype, row by row (as
``param.grad += row_grad`` in a low-precision gradient buffer).

Spec 5.2.3: sums accumulated in binary32 or wider; d lambda_d and d lambda_b are sums over N. With
the layer cases' N <= 128 rows of random sign the dtype sum stays inside the bound; numerics'
long_batch case (N = 2048 rows, dy * v of one sign over the batch) shows it in both dtypes.
"""
from _plant import reference_impl, torch_impl  # noqa: F401

CLAUSE = "5.2.3"
AREA = "numerics"
EXPECT = "caught"


def make():
    return reference_impl(lib=[("layer.py",
                                "    d_lambda_b = op.cast(np.sum(op.mul(dy2, v), axis=0, dtype=np.float64 if "
                                "op.exact else np.float32))\n",
                                "    prods = op.mul(dy2, v)\n"
                                "    d_lambda_b = prods[0]\n"
                                "    for row in prods[1:]:  # planted: the batch sum in the dtype\n"
                                "        d_lambda_b = op.add(d_lambda_b, row)\n")],
                          name="planted: d lambda_b summed in the dtype")
