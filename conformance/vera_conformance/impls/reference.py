"""vera_ref itself, through the public door: its float32 path (and float64, the reference)."""
from __future__ import annotations

import numpy as np

import vera_ref

from ..protocol import Implementation, LayerCase, LoadedAdapter


class Reference(Implementation):
    name = "vera_ref (NumPy reference)"
    capabilities = frozenset({"generator", "forward", "backward", "merge", "unmerge", "files"})
    devices = frozenset({"cpu"})
    dtypes = frozenset({"float32", "float64"})

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

    def load_adapter(self, path) -> LoadedAdapter:
        return LoadedAdapter.of(vera_ref.load_adapter(path))

    def save_adapter(self, adapter: LoadedAdapter, path) -> None:
        ad = vera_ref.new_adapter(adapter.modules, r=adapter.r, seed=adapter.seed, generator=adapter.generator,
                                  vector_dtype=adapter.vector_dtype)
        for name in ad.lambda_d:
            ad.lambda_d[name] = np.asarray(adapter.lambda_d[name]).astype(ad.lambda_d[name].dtype)
            ad.lambda_b[name] = np.asarray(adapter.lambda_b[name]).astype(ad.lambda_b[name].dtype)
        vera_ref.save_adapter(ad, path)


def make() -> Reference:
    return Reference()
