"""Dropout is applied to the layer input before the base weight as well as the adapter.

``x = self.dropout(x)`` at the top of forward, as some LoRA ports do. Spec 3.3: dropout acts on
the adapter input only; the base path sees x.
"""
from _plant import reference_impl, torch_impl  # noqa: F401

CLAUSE = "3.3"
AREA = "math"
EXPECT = "caught"


def make():
    return reference_impl(lib=[("layer.py", "    base = op.mm(x, _weight_t(W, layout))  # (..., out)\n",
                                "    base = op.mm(op.cast(_dropped(x, dropout_mask, dropout)), _weight_t(W, "
                                "layout))\n")],
                          name="planted: dropout on the base path too")
