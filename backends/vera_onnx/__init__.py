"""vera_onnx: VeRA for ONNX and ONNX Runtime (DESIGN 4).

    from vera_onnx import export, onnx_adapter, VeraOnnxSession
    export(vera_model, (x,), "model.onnx", mode="merged")            # the base model's operators only
    export(vera_model, (x,), "hot.onnx", mode="hotswap")             # lambdas as overridable inputs
    sess = VeraOnnxSession("hot.onnx"); sess.load_adapter("a", "a.safetensors")
    sess.run(None, {"input_0": x}, adapter="a")
"""
from .export import describe, export
from .generator import philox_model, projection_model, projection_nodes
from .serving import VeraOnnxSession, adapter_parameters, onnx_adapter

__all__ = ["export", "describe", "onnx_adapter", "adapter_parameters", "VeraOnnxSession", "philox_model",
           "projection_model", "projection_nodes"]
