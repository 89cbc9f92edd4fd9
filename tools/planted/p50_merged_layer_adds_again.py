"""A merged layer still adds the adapter term in its forward: the "merged" check is missing from the
unfused path, so after ``merge()`` the output carries Delta W twice (W0 + Delta W in the weight,
plus lambda_b * ... again).

A classic LoRA-port bug (the flag is set but the forward never reads it). Spec 3.5: a merged layer
computes y = x (W0 + Delta W)^T + b, the forward of 3.2 and nothing more.
"""
from _plant import torch_impl

CLAUSE = "3.5"
AREA = "math"
EXPECT = "caught"
BASE = "b_torch"
WHY_ESCAPES = ("The kit's merge check compares the merged weight only (merge(case) returns W); no check runs "
               "the forward of a merged layer. Missing check: merged forward, y of the merged layer equals "
               "the reference forward (and unmerge then forward equals it again), in every dtype")


def make():
    return torch_impl(lib=[("layer.py", "        if name is None or name not in self.proj or name in self.merged:\n",
                            "        if name is None or name not in self.proj:  # planted: merged is not checked\n")],
                      name="planted: vera_torch merged layer adds the adapter again")
