"""Each layer generates its projection at its own size instead of the group's (n_in, n_out).

The most natural port of a LoRA-style layer: ``A, B = projection(seed, r, in_features,
out_features)``. Spec 2.2/2.3: the group's pair is generated at (n_in, n_out), the largest sizes,
and every layer takes its leading slice; the Kaiming bound of A uses fan_in = n_in, so even the
slice's values differ.
"""
from _plant import reference_impl, torch_impl  # noqa: F401

CLAUSE = "2.2"
AREA = "generator"
EXPECT = "caught"


def make():
    return reference_impl(impl=[("return self.projection(c.seed, c.r, c.n_in, c.n_out, c.group, c.device)",
                                 "return self.projection(c.seed, c.r, c.in_features, c.out_features, c.group, "
                                 "c.device)")],
                          name="planted: projection at the layer's own size")
