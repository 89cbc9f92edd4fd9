"""Biases of the base model stay trainable (LoRA's ``bias="all"`` habit): only the weights are
frozen.

Spec 3.4 / 5.3 level T: the bias is frozen.
"""
from _plant import reference_impl, torch_impl  # noqa: F401

CLAUSE = "3.4"
AREA = "training"
EXPECT = "caught"
BASE = "b_torch"


def make():
    return torch_impl(lib=[("model.py", "            p.requires_grad_(False)\n",
                            "            p.requires_grad_(p.ndim == 1)  # planted: biases stay trainable\n")],
                      name="planted: vera_torch with trainable biases")
