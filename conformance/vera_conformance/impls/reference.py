"""vera_ref itself, through the public door: float64 (the reference) and its low-precision
paths of spec 3.8 (float32, float16, bfloat16), SGD training included."""
from __future__ import annotations

import dataclasses

import numpy as np

import vera_ref
from vera_ref.dtypes import round_to

from ..protocol import Implementation, LayerCase, LoadedAdapter, Trained


class Reference(Implementation):
    name = "vera_ref (NumPy reference)"
    capabilities = frozenset({"generator", "forward", "backward", "merge", "unmerge", "train", "files",
                              "merged_forward"})
    devices = frozenset({"cpu"})
    dtypes = frozenset({"float32", "float16", "bfloat16", "float64"})

    def projection(self, seed, r, n_in, n_out, group, device):
        return vera_ref.projection(seed, r, n_in, n_out, group)

    def philox(self, counters, key, device):
        return vera_ref.philox4x32(counters, key)

    def _proj(self, c: LayerCase):
        return self.projection(c.seed, c.r, c.n_in, c.n_out, c.group, c.device)  # own generator, then sliced

    def forward(self, c: LayerCase):
        return vera_ref.forward(c.x, c.W, c.bias, *self._proj(c), c.lambda_d, c.lambda_b, layout=c.layout,
                                dropout_mask=c.dropout_mask, dropout=c.dropout, dtype=c.dtype)

    def backward(self, c: LayerCase):
        return tuple(vera_ref.backward(c.x, c.W, *self._proj(c), c.lambda_d, c.lambda_b, c.dy, layout=c.layout,
                                       dropout_mask=c.dropout_mask, dropout=c.dropout, dtype=c.dtype))

    def merge(self, c: LayerCase):
        return vera_ref.merge(c.W, *self._proj(c), c.lambda_d, c.lambda_b, layout=c.layout, dtype=c.dtype)

    def unmerge(self, c: LayerCase, W_merged):
        return vera_ref.unmerge(W_merged, *self._proj(c), c.lambda_d, c.lambda_b, layout=c.layout, dtype=c.dtype)

    def merged_forward(self, c: LayerCase):
        """The merged layer is the base layer with this merge's W0 + Delta W (the forward with
        lambda_b = 0 adds an exact zero); after this unmerge, the layer's forward with W - Delta W."""
        A, B = self._proj(c)
        Wm = self.merge(c)
        y_m = vera_ref.forward(c.x, Wm, c.bias, A, B, c.lambda_d, np.zeros_like(c.lambda_b), layout=c.layout,
                               dtype=c.dtype)
        return y_m, self.forward(dataclasses.replace(c, W=self.unmerge(c, Wm)))

    def train_steps(self, c: LayerCase, lr: float, steps: int) -> Trained:
        """Plain SGD on sum(dy * y): lambda <- lambda - lr * grad, stored in the case's dtype."""
        A, B = self._proj(c)
        ld, lb = c.lambda_d.copy(), c.lambda_b.copy()
        for _ in range(steps):
            g = vera_ref.backward(c.x, c.W, A, B, ld, lb, c.dy, layout=c.layout, dropout_mask=c.dropout_mask,
                                  dropout=c.dropout, dtype=c.dtype)
            ld = round_to(ld - lr * g.lambda_d, c.dtype).astype(np.float64)
            lb = round_to(lb - lr * g.lambda_b, c.dtype).astype(np.float64)
        return Trained(ld, lb, {"lambda_d": ld, "lambda_b": lb}, c.W, A[:, :c.in_features], B[:c.out_features],
                       c.bias)

    def load_adapter(self, path) -> LoadedAdapter:
        return LoadedAdapter.of(vera_ref.load_adapter(path))

    def save_adapter(self, adapter: LoadedAdapter, path) -> None:
        """Every field of the content (spec 4.3-4.5), the fingerprint of its base weights when given."""
        vera_ref.save_adapter(adapter.to_adapter(), path)


def make() -> Reference:
    return Reference()
