"""Deliberately wrong implementations: each must fail at least one check (the kit's own test).

Every one is the reference with one plausible bug.
"""
from __future__ import annotations

import numpy as np

import vera_ref
from vera_ref.projection import kaiming_bound

from ..protocol import LayerCase
from .reference import Reference


def _base(c: LayerCase):
    y = c.x @ (c.W.T if c.layout == "linear" else c.W)
    return y + c.bias if c.bias is not None else y


class TransposedA(Reference):
    """Builds A as value(T[0]) (n_in, r) and reshapes it to (r, n_in) instead of transposing."""
    name = "broken: A reshaped instead of transposed"

    def projection(self, seed, r, n_in, n_out, group, device):
        A, B = vera_ref.projection(seed, r, n_in, n_out, group)
        return np.ascontiguousarray(A.T).reshape(r, n_in), B


class LambdaDAfterB(Reference):
    """Scales the output of B by lambda_d (wrapped around) instead of the input of B."""
    name = "broken: lambda_d applied after B"

    def forward(self, c: LayerCase):
        A, B = self._proj(c)
        xd = c.x if c.dropout_mask is None else c.x * c.dropout_mask / (1 - c.dropout)
        v = (xd @ A[:, :c.in_features].T) @ B[:c.out_features].T
        return _base(c) + c.lambda_b * v * c.lambda_d[np.arange(c.out_features) % c.r]


class OwnUniform(Reference):
    """Uses NumPy's own uniform sampler instead of the spec's bits-to-float mapping."""
    name = "broken: framework's own uniform"

    def projection(self, seed, r, n_in, n_out, group, device):
        rng = np.random.default_rng(seed)
        bA, bB = float(kaiming_bound(n_in)), float(kaiming_bound(r))
        return (rng.uniform(-bA, bA, (r, n_in)).astype(np.float32), rng.uniform(-bB, bB, (n_out, r)).astype(np.float32))


class BoundFromLayer(Reference):
    """Takes A's Kaiming bound from the layer's own in_features instead of n_in (spec 1.6)."""
    name = "broken: A's bound from the layer's in_features"

    def _proj(self, c: LayerCase):
        A, B = vera_ref.projection(c.seed, c.r, c.n_in, c.n_out, c.group)
        return A * (kaiming_bound(c.in_features) / kaiming_bound(c.n_in)), B


class MergeWithoutLambdaB(Reference):
    """Forgets lambda_b when merging."""
    name = "broken: merge without lambda_b"

    def merge(self, c: LayerCase):
        A, B = self._proj(c)
        dW = B[:c.out_features] @ (c.lambda_d[:, None] * A[:, :c.in_features])
        return c.W + (dW if c.layout == "linear" else dW.T)


class OffByOneSlice(Reference):
    """Slices A from column 1 and B from row 1 (an off-by-one in the leading-slice rule)."""
    name = "broken: off-by-one slice"

    def _proj(self, c: LayerCase):
        A, B = vera_ref.projection(c.seed, c.r, c.n_in + 1, c.n_out + 1, c.group)
        return A[:, 1:], B[1:]


class DropoutOnOutput(Reference):
    """Applies dropout to the adapter's output instead of its input (spec 3.3)."""
    name = "broken: dropout on the output"

    def forward(self, c: LayerCase):
        A, B = self._proj(c)
        h = c.x @ A[:, :c.in_features].T
        delta = c.lambda_b * ((c.lambda_d * h) @ B[:c.out_features].T)
        if c.dropout_mask is not None:
            delta = delta * np.resize(c.dropout_mask, delta.shape) / (1 - c.dropout)
        return _base(c) + delta


BROKEN = [TransposedA, LambdaDAfterB, OwnUniform, BoundFromLayer, MergeWithoutLambdaB, OffByOneSlice,
          DropoutOnOutput]
