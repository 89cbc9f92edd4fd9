"""vera_onnx: VeRA for ONNX and ONNX Runtime (README "ONNX and ONNX Runtime").

    from vera_onnx import export, onnx_adapter, VeraOnnxSession
    export(vera_model, (x,), "model.onnx", mode="merged")            # the base model's operators only
    export(vera_model, (x,), "hot.onnx", mode="hotswap")             # lambdas as overridable inputs
    export(vera_model, (x,), "multi.onnx", mode="multi", capacity=64)  # one adapter per row of a batch
    sess = VeraOnnxSession("hot.onnx"); sess.load_adapter("a", "a.safetensors")
    sess.run(None, {"input_0": x}, adapter="a")

Serving (``VeraOnnxSession``, ``onnx_adapter``, the generator graph) needs onnx,
onnxruntime and NumPy only; ``export`` needs torch and imports it on first use.
"""
from __future__ import annotations

import importlib.util
from typing import Any

for _dep in ("onnx", "onnxruntime"):  # the serving side's only dependencies besides NumPy
    if importlib.util.find_spec(_dep) is None:
        raise ModuleNotFoundError(f"vera_onnx needs {_dep} (pip install 'vera-ref[onnx]')", name=_dep)

from .adapters import adapter_parameters, onnx_adapter, read_parameters
from .description import describe
from .errors import ExportError, OnnxAdapterError, OnnxError
from .generator import philox_model, projection_model, projection_nodes
from .serving import VeraOnnxSession

__all__ = ["export", "describe", "onnx_adapter", "adapter_parameters", "read_parameters", "VeraOnnxSession",
           "philox_model", "projection_model", "projection_nodes", "OnnxError", "OnnxAdapterError", "ExportError"]


def __getattr__(name: str) -> Any:
    if name == "export":  # torch is needed by the exporter only (vera_onnx/torch_export.py)
        try:
            from .torch_export import export
        except ModuleNotFoundError as exc:
            if exc.name != "torch":
                raise
            raise ModuleNotFoundError("vera_onnx.export needs torch (pip install 'vera-ref[torch]'); serving "
                                      "exported models needs onnx and onnxruntime only", name="torch") from None
        globals()["export"] = export
        return export
    raise AttributeError(f"module 'vera_onnx' has no attribute {name!r}")
