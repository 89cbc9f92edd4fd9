"""B's Kaiming bound uses fan_in = n_out: B was allocated as (r, n_out) and initialised with
``kaiming_uniform_`` before being transposed.

Spec 1.6/2.1: B's bound comes from fan_in = r.
"""
from _plant import reference_impl, torch_impl  # noqa: F401

CLAUSE = "1.6"
AREA = "generator"
EXPECT = "caught"


def make():
    return reference_impl(lib=[("projection.py", "kaiming_bound(r), ws).T  # (n_out, r)",
                                "kaiming_bound(n_out), ws).T  # (n_out, r)")],
                          name="planted: B bound from fan_in = n_out")
