"""Deliberately wrong implementations for the long-batch cases of the numerics check
(checks_numeric.py): each must fail the check named in ``CAUGHT_BY``
(tests/conformance/test_conformance.py asserts it)."""
from __future__ import annotations

import numpy as np

from vera_ref.dtypes import round_to

from ..protocol import LayerCase
from .reference import Reference

LOW = ("float16", "bfloat16")


def _running_sum(terms: np.ndarray, dtype: str) -> np.ndarray:
    """sum over axis 0 of ``terms`` (N, k), one row at a time, each partial sum rounded to ``dtype``."""
    acc = terms[0]
    for row in terms[1:]:
        acc = round_to(acc.astype(np.float32) + row.astype(np.float32), dtype).astype(np.float64)
    return acc


class BatchSumInStorage(Reference):
    """float16/bfloat16 vector gradients summed over the batch in the storage dtype, row by row (a
    low-precision gradient buffer, ``param.grad += row_grad``, or a reduction kernel with a dtype
    accumulator); every other sum in binary32. Spec 5.2.3 asks binary32 or wider for every sum,
    the batch sums of d lambda_d and d lambda_b (spec 3.4) included. The layer cases (N <= 128
    rows of random sign) pass it; numerics' long_batch (N = 2048, one-sign over N) does not."""
    name = "broken: vector gradients summed over the batch in float16/bfloat16"
    sums: tuple[str, ...] = ("lambda_d", "lambda_b")  # which batch sums run in the dtype

    def backward(self, c: LayerCase):
        dx, dld, dlb = super().backward(c)
        if c.dtype not in LOW:
            return dx, dld, dlb
        dt = c.dtype

        def rnd(a):
            return round_to(np.asarray(a, np.float64), dt).astype(np.float64)

        def mm(a, b):  # products accumulated in binary32, the result rounded (as the reference)
            return rnd(a.astype(np.float32) @ b.astype(np.float32))
        A, B = self._proj(c)
        A_l, B_l = rnd(A[:, :c.in_features]), rnd(B[:c.out_features])  # (r, in), (out, r)
        x = rnd(c.x).reshape(-1, c.in_features)  # (N, in)
        if c.dropout_mask is not None:
            x = rnd(x * np.asarray(c.dropout_mask, np.float64).reshape(x.shape) / (1.0 - c.dropout))
        dy = rnd(c.dy).reshape(-1, c.out_features)  # (N, out)
        ld, lb = rnd(c.lambda_d), rnd(c.lambda_b)
        h = mm(x, A_l.T)  # (N, r)
        v = mm(rnd(h * ld), B_l.T)  # (N, out)
        gB = mm(rnd(dy * lb), B_l)  # (N, r)
        if "lambda_d" in self.sums:
            dld = _running_sum(rnd(gB * h), dt)  # (r,): the batch sum in the dtype
        if "lambda_b" in self.sums:
            dlb = _running_sum(rnd(dy * v), dt)  # (out,): the batch sum in the dtype
        return dx, dld, dlb


CAUGHT_BY: dict = {BatchSumInStorage: "numerics"}
