"""Hypothesis strategies for the conformance checks (shapes, seeds, values, dtypes)."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

import vera_ref
from vera_ref.dtypes import round_to

from .protocol import LayerCase

seeds = st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 1, 2**32 - 1, 2**32, 2**64 - 1]))
# ranks include 1 and values not divisible by 4 (spec 1.4: the last counter is partly used)
ranks = st.one_of(st.sampled_from([1, 2, 3, 4, 5, 7, 8]), st.integers(1, 40))


@st.composite
def layer_cases(draw, dtype: str, device: str, layouts=("linear", "conv1d"), dropout: bool = True) -> LayerCase:
    """A layer smaller than (or equal to) the shared projection, with inputs rounded to ``dtype``."""
    r = draw(ranks)
    in_f, out_f = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    # n_in, n_out >= the layer: the leading-slice rule (spec 2.3) is exercised whenever they differ
    n_in = in_f + draw(st.sampled_from([0, 0, 1, 3, 17]))
    n_out = out_f + draw(st.sampled_from([0, 0, 1, 5, 16]))
    group = draw(st.sampled_from([0, 0, 0, 1, 7]))
    seed = draw(seeds)
    layout = draw(st.sampled_from(layouts))
    N = draw(st.integers(1, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([1.0, 1.0, 0.01, 30.0])) if dtype != "float16" else 1.0

    def vals(*shape, s=1.0):
        return round_to(rng.normal(size=shape) * s, dtype).astype(np.float64)

    x = vals(N, in_f, s=scale)
    W = vals(out_f, in_f, s=1 / np.sqrt(in_f)) if layout == "linear" else vals(in_f, out_f, s=1 / np.sqrt(in_f))
    bias = vals(out_f) if draw(st.booleans()) else None
    ld, lb = vals(r), vals(out_f)
    dy = vals(N, out_f)
    p, mask = 0.0, None
    if dropout and draw(st.integers(0, 3)) == 0:
        p = draw(st.sampled_from([0.1, 0.5]))
        mask = (rng.random((N, in_f)) >= p).astype(np.float64)
    A, B = vera_ref.projection(seed, r, n_in, n_out, group)
    return LayerCase(seed, r, n_in, n_out, group, layout, x, W, bias, ld, lb, dy, A, B, dtype, device, p, mask)


projection_args = st.tuples(seeds, ranks, st.integers(1, 300), st.integers(1, 300), st.integers(0, 9))
