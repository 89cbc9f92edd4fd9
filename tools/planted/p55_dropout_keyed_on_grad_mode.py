"""Dropout is applied whenever gradients are being computed (``torch.is_grad_enabled()``) instead
of in training mode (``self.training``): inference under ``torch.no_grad()`` is right, but a model
in evaluation mode that computes gradients (saliency maps, gradient-based evaluation, an eval-mode
fine-tuning step) drops adapter inputs at random.

Spec 3.3: dropout acts in training mode only; in evaluation mode it is the identity, whatever is
being computed.
"""
from _plant import torch_impl

CLAUSE = "3.3"
AREA = "math"
EXPECT = "caught"
BASE = "b_torch"


def make():
    return torch_impl(lib=[("layer.py", "        if p > 0 and self.training:\n",
                            "        if p > 0 and torch.is_grad_enabled():  # planted: grad mode, not train mode\n")],
                      name="planted: vera_torch dropout keyed on grad mode")
