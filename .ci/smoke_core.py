"""In a venv holding NumPy and the wheel only: importing vera_ref loads no optional package."""
import sys

import vera_ref  # noqa: F401
from vera_ref import cli, generators, resources  # noqa: F401

loaded = sorted(m for m in ("torch", "hypothesis", "onnx", "onnxruntime", "jax", "peft", "safetensors")
                if m in sys.modules)
assert not loaded, f"import vera_ref loaded {loaded}"
assert "site-packages" in resources.vectors_dir().as_posix(), resources.vectors_dir()
print(f"vera_ref {vera_ref.__version__} from the wheel; vectors at {resources.vectors_dir()}; no optional package loaded")
