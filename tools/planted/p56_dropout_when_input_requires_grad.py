"""Dropout is applied in training mode and also whenever the input requires grad: the layer
guesses "training" from autograd instead of reading the module's mode. Evaluation-mode inference
is right; gradients taken in evaluation mode (saliency, influence functions, an eval-mode step of
a frozen-BN recipe) see dropped adapter inputs.

Spec 3.3: in evaluation mode dropout is the identity, for the forward and therefore its gradients.
``eval_dropout`` runs the forward without gradients (right here); ``eval_dropout_backward`` takes
them in evaluation mode with p > 0.
"""
from _plant import torch_impl

CLAUSE = "3.3"
AREA = "math"
EXPECT = "caught"
BASE = "b_torch"


def make():
    return torch_impl(lib=[("layer.py", "        if p > 0 and self.training:\n",
                            "        if p > 0 and (self.training or x.requires_grad):  # planted\n")],
                      name="planted: vera_torch dropout when the input requires grad")
