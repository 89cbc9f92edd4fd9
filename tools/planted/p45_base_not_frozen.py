"""The base model is not frozen: ``get_vera_model`` forgets ``requires_grad_(False)`` on the base
parameters, so the optimizer trains W0 and the bias as well (AdapterHub's full-matrix training).

Spec 3.4 / 5.3 level T: exactly one lambda_d (r) and one lambda_b (out) trained per layer; W0, A,
B and the bias unchanged.
"""
from _plant import reference_impl, torch_impl  # noqa: F401

CLAUSE = "3.4"
AREA = "training"
EXPECT = "caught"
BASE = "b_torch"


def make():
    return torch_impl(lib=[("model.py", "            p.requires_grad_(False)\n",
                            "            pass  # planted: the base model is not frozen\n")],
                      name="planted: vera_torch with the base model not frozen")
