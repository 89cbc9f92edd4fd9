"""Deliberately wrong implementations for the merged-layer forward and evaluation-mode gradient
checks (checks_math.py): each must fail the check named in ``CAUGHT_BY``
(tests/conformance/test_conformance.py asserts it).

Each is the reference with one bug seen in LoRA-style ports: a merged layer that still adds the
adapter term (the merged flag set, never read by the forward), an unmerge that leaves Delta W in
the weight, and dropout drawn in evaluation mode whenever gradients are taken (the forward of an
evaluation-mode layer is right, its gradients are not).
"""
from __future__ import annotations

import numpy as np

import vera_ref

from ..protocol import LayerCase
from .reference import Reference


class MergedLayerAddsAgain(Reference):
    """After merge, the forward still adds lambda_b * ((lambda_d * (x A^T)) B^T): Delta W twice."""
    name = "broken: merged layer adds the adapter term again"

    def merged_forward(self, c: LayerCase):
        A, B = self._proj(c)
        kw = dict(layout=c.layout, dtype=c.dtype)
        Wm = vera_ref.merge(c.W, A, B, c.lambda_d, c.lambda_b, **kw)
        y_m = vera_ref.forward(c.x, Wm, c.bias, A, B, c.lambda_d, c.lambda_b, **kw)  # the bug: lambda_b kept
        return y_m, self.forward(c)


class UnmergeKeepsDelta(Reference):
    """unmerge() clears the merged flag but leaves W0 + Delta W in the weight: the forward after it
    adds the adapter term to a weight that already holds it. The merged forward is right."""
    name = "broken: unmerge leaves Delta W in the weight"

    def merged_forward(self, c: LayerCase):
        A, B = self._proj(c)
        kw = dict(layout=c.layout, dtype=c.dtype)
        Wm = vera_ref.merge(c.W, A, B, c.lambda_d, c.lambda_b, **kw)
        y_m = vera_ref.forward(c.x, Wm, c.bias, A, B, c.lambda_d, np.zeros_like(c.lambda_b), **kw)
        return y_m, vera_ref.forward(c.x, Wm, c.bias, A, B, c.lambda_d, c.lambda_b, **kw)  # the bug: Wm, not W0


class EvalDropoutWithGrad(Reference):
    """Drops adapter inputs (a mask drawn from the case) whenever a backward runs with p > 0, in
    evaluation mode too: the layer reads "gradients wanted" as "training". Its forward is right."""
    name = "broken: evaluation-mode dropout in the backward"

    def backward(self, c: LayerCase):
        if c.dropout > 0 and c.dropout_mask is None:
            mask = (np.random.default_rng(c.seed % 2**32).random(c.x.shape) >= c.dropout).astype(np.float64)
            A, B = self._proj(c)
            return tuple(vera_ref.backward(c.x, c.W, A, B, c.lambda_d, c.lambda_b, c.dy, layout=c.layout,
                                           dropout_mask=mask, dropout=c.dropout, dtype=c.dtype))
        return super().backward(c)


CAUGHT_BY: dict = {MergedLayerAddsAgain: "merged_forward", UnmergeKeepsDelta: "merged_forward",
                   EvalDropoutWithGrad: "eval_dropout_backward"}
