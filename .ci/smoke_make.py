"""Make the files the wheel smoke tests serve (run in the development venv, which has torch).

Writes into OUT: adapter.safetensors (a trained-looking VeRA adapter on a 2-layer MLP),
hotswap.onnx (the hot-swap export of that MLP), x.npy (an input) and expected.npy (torch's
output with the adapter), so a venv holding only NumPy + onnxruntime can check that serving
gives the same numbers (README "ONNX Runtime").
"""
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vera_onnx import export
from vera_torch import VeraConfig, get_vera_model

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)
base = nn.Sequential(nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 8))
vm = get_vera_model(base, VeraConfig(r=8, target_modules=["0", "2"], seed=7)).eval()
with torch.no_grad():
    for p in vm.parameters():
        if p.requires_grad:
            p.copy_(torch.randn_like(p) * 0.5)
x = torch.randn(3, 16)
vm.save_adapter(out / "adapter.safetensors")
export(vm, (x,), out / "hotswap.onnx", mode="hotswap", input_names=["x"])
np.save(out / "x.npy", x.numpy())
with torch.no_grad():
    np.save(out / "expected.npy", vm(x).numpy())
print(f"smoke files in {out}")
