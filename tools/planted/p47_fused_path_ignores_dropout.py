"""vera_torch's fused path (one matmul with W0 + Delta W) is taken in training mode with dropout,
where Delta W cannot carry a per-element mask: the dropout guard of ``_fused_path`` is gone.

Only cases where the cost model picks the fused path (many rows, small layers) and dropout > 0
in training show it. Spec 3.3.
"""
from _plant import reference_impl, torch_impl  # noqa: F401

CLAUSE = "3.3"
AREA = "math"
EXPECT = "caught"
BASE = "b_torch"


def make():
    return torch_impl(lib=[("layer.py",
                            "        if self.dropout[name] > 0 and self.training:\n            return None\n", "")],
                      name="planted: vera_torch fused path with dropout")
