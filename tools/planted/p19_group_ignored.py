"""Per-module sharing: every layer uses group 0's projection (the group index is never passed to the
generator).

Spec 2.4: with ``per-module`` sharing module i uses its own pair, group i + 1.
"""
from _plant import reference_impl, torch_impl  # noqa: F401

CLAUSE = "2.4"
AREA = "generator"
EXPECT = "caught"


def make():
    return reference_impl(impl=[("return self.projection(c.seed, c.r, c.n_in, c.n_out, c.group, c.device)",
                                 "return self.projection(c.seed, c.r, c.n_in, c.n_out, 0, c.device)")],
                          name="planted: group ignored")
