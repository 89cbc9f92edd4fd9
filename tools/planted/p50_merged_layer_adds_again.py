"""A merged layer still adds the adapter term in its forward: the "merged" check is missing from the
unfused path, so after ``merge()`` the output carries Delta W twice (W0 + Delta W in the weight,
plus lambda_b * ... again).

A classic LoRA-port bug (the flag is set but the forward never reads it). Spec 3.5: a merged layer
computes y = x (W0 + Delta W)^T + b, the forward of 3.2 and nothing more. The merge check compares
the merged weight only (right here); ``merged_forward`` runs the merged layer's forward.
"""
from _plant import torch_impl

CLAUSE = "3.5"
AREA = "math"
EXPECT = "caught"
BASE = "b_torch"


def make():
    return torch_impl(lib=[("layer.py", "        if name is None or name not in self.proj or name in self.merged:\n",
                            "        if name is None or name not in self.proj:  # planted: merged is not checked\n")],
                      name="planted: vera_torch merged layer adds the adapter again")
