"""Dropout is drawn in evaluation mode too (a module left in training mode, or ``F.dropout(x, p)``
with its default ``training=True``).

This is the mLoRA bug of issue 24. Spec 3.3: in evaluation mode dropout is the identity.
"""
from _plant import reference_impl, torch_impl  # noqa: F401

CLAUSE = "3.3"
AREA = "math"
EXPECT = "caught"


def make():
    return reference_impl(lib=[("layer.py", "    if mask is None:\n        return x\n",
                                "    if mask is None:\n        if dropout <= 0:\n            return x\n"
                                "        mask = np.random.default_rng().random(np.shape(x)) >= dropout\n")],
                          name="planted: dropout drawn in evaluation mode")
