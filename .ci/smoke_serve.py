"""Serve the smoke files in a venv WITHOUT torch: the hot-swap model with and without the adapter."""
import sys
from pathlib import Path

import numpy as np

import vera_onnx  # must not import torch
from vera_onnx import VeraOnnxSession

assert "torch" not in sys.modules, "import vera_onnx loaded torch"
d = Path(sys.argv[1])
sess = VeraOnnxSession(d / "hotswap.onnx")
sess.load_adapter("a", d / "adapter.safetensors")
x = np.load(d / "x.npy")
got = sess.run(None, {"x": x}, adapter="a")[0]
want = np.load(d / "expected.npy")
err = float(np.abs(got - want).max())
base = sess.run(None, {"x": x})[0]
assert err < 1e-5, f"served output differs from torch by {err}"
assert float(np.abs(base - want).max()) > 1e-3, "the adapter changed nothing: the check would be blind"
assert "torch" not in sys.modules, "serving loaded torch"
print(f"onnxruntime {__import__('onnxruntime').__version__} served the hot-swap model without torch: "
      f"max |ORT - torch| {err:.1e}; vera_onnx from {Path(vera_onnx.__file__).parent}")
