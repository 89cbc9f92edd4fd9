"""vera_onnx on ONNX Runtime (CPU): the generator graph, hot-swap forward, merged export.

ONNX Runtime runs inference only: no backward, no dropout (cases with a dropout mask are
not drawn), no unmerge (a merged export has no adapter left to subtract: merged_forward checks the
merged export's forward only); ORT adapter
files are not spec files, so no files capability either.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np

from ..protocol import Implementation, LayerCase


class OnnxImpl(Implementation):
    capabilities = frozenset({"generator", "forward", "merge", "merged_forward"})
    dtypes = frozenset({"float32", "float16"})
    dropout = False

    def __init__(self) -> None:
        import onnxruntime as ort
        self.ort = ort
        self.name = f"vera_onnx (ONNX Runtime {ort.__version__}, CPU)"
        self._tmp = tempfile.TemporaryDirectory(prefix="vera-onnx-conf-")

    def _session(self, src):
        so = self.ort.SessionOptions()
        so.log_severity_level = 3
        return self.ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])

    def projection(self, seed, r, n_in, n_out, group, device):
        from vera_onnx import projection_model
        return tuple(self._session(projection_model(seed, r, n_in, n_out, group).SerializeToString()).run(None, {}))

    def philox(self, counters, key, device):
        from vera_onnx import philox_model
        return self._session(philox_model().SerializeToString()).run(None, {"counters": counters, "key": key})[0]

    def _export(self, c: LayerCase, mode: str):
        import torch
        from vera_conformance.impls.torch_impl import make
        from vera_onnx import export
        timpl = make()
        m, layer, _ = timpl._model(LayerCase(**{**c.__dict__, "dtype": "float32"}))
        tdt = torch.float16 if c.dtype == "float16" else torch.float32
        path = os.path.join(self._tmp.name, f"{mode}.onnx")
        x = torch.tensor(c.x, dtype=tdt)
        export(m, (x,), path, mode=mode, dtype=tdt, input_names=["x"], projections="generator" if mode == "hotswap"
               and c.group == 0 else "initializers")
        return path, m, x

    @staticmethod
    def _dtype(c: LayerCase) -> None:
        if c.dtype not in ("float32", "float16"):  # a clear refusal: the kit's probe reports "not supported"
            raise NotImplementedError(f"{c.dtype} is not supported by this wrapper (ORT CPU: float32, float16)")

    def forward(self, c: LayerCase):
        self._dtype(c)
        path, m, x = self._export(c, "hotswap")
        np_dt = np.float16 if c.dtype == "float16" else np.float32
        feeds = {"x": c.x.astype(np_dt)}
        for v, arr in (("d", c.lambda_d), ("b", c.lambda_b)):
            feeds[f"layer.lambda_{v}"] = arr.astype(np_dt)
        return self._session(path).run(None, feeds)[0]

    def merged_forward(self, c: LayerCase):
        """The merged export run by ORT (no unmerge: the export has no adapter left to subtract)."""
        self._dtype(c)
        path, m, x = self._export(c, "merged")
        return self._session(path).run(None, {"x": c.x.astype(np.float16 if c.dtype == "float16" else np.float32)})[0], None

    def merge(self, c: LayerCase):
        import onnx
        from onnx import numpy_helper
        self._dtype(c)
        path, m, x = self._export(c, "merged")
        inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
        W = next((v for k, v in inits.items() if k == "layer.weight" or k.endswith(".layer.weight")), None)
        if W is None:  # the exporter stored the weight for a MatMul under a generated name: (in, out)
            W = next(v for k, v in inits.items() if k.startswith("onnx::") and v.ndim == 2
                     and v.shape == (c.in_features, c.out_features))
            W = W.T if c.layout == "linear" else W
        return W.astype(np.float64)


def make() -> OnnxImpl:
    return OnnxImpl()
