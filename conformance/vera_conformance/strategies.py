"""Hypothesis strategies for the conformance checks (shapes, seeds, values, dtypes).

A layer case is drawn as a small JSON-able *spec* (sizes, seeds, flags) and built
deterministically by ``build_case``, so every failure can be replayed exactly from its
spec (``--case``) by anyone.
"""
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
def case_specs(draw, dropout: bool = True) -> dict:
    """Sizes and seeds of one layer case. Layers are often smaller than the shared projection
    (n_in > in_features, n_out > out_features), so the leading-slice rule (spec 2.3) and A's
    bound from n_in (spec 1.6) are exercised."""
    in_f, out_f = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    p = draw(st.sampled_from([0.0, 0.0, 0.0, 0.1, 0.5])) if dropout else 0.0
    return {
        "seed": str(draw(seeds)), "r": draw(ranks),
        "in_features": in_f, "out_features": out_f,
        "n_in": in_f + draw(st.sampled_from([0, 0, 1, 3, 17])),
        "n_out": out_f + draw(st.sampled_from([0, 0, 1, 5, 16])),
        "group": draw(st.sampled_from([0, 0, 0, 1, 7])),
        "layout": draw(st.sampled_from(["linear", "conv1d"])),
        "N": draw(st.integers(1, 6)), "bias": draw(st.booleans()),
        "scale": draw(st.sampled_from([1.0, 1.0, 0.01, 30.0])),
        "values_seed": draw(st.integers(0, 2**32 - 1)), "dropout": p,
    }


def build_case(spec: dict, dtype: str, device: str) -> LayerCase:
    """The arrays of a case spec, rounded to ``dtype`` (the reference sees the same values)."""
    rng = np.random.default_rng(spec["values_seed"])
    N, in_f, out_f, r = spec["N"], spec["in_features"], spec["out_features"], spec["r"]
    scale = 1.0 if dtype == "float16" else spec["scale"]  # float16 overflows at 65504

    def vals(*shape, s=1.0):
        return round_to(rng.normal(size=shape) * s, dtype).astype(np.float64)

    x = vals(N, in_f, s=scale)
    W = vals(out_f, in_f, s=1 / np.sqrt(in_f)) if spec["layout"] == "linear" else vals(in_f, out_f, s=1 / np.sqrt(in_f))
    bias = vals(out_f) if spec["bias"] else None
    ld, lb, dy = vals(r), vals(out_f), vals(N, out_f)
    p = spec["dropout"]
    mask = (rng.random((N, in_f)) >= p).astype(np.float64) if p else None
    seed = int(spec["seed"])
    A, B = vera_ref.projection(seed, r, spec["n_in"], spec["n_out"], spec["group"])
    return LayerCase(seed, r, spec["n_in"], spec["n_out"], spec["group"], spec["layout"], x, W, bias, ld, lb, dy,
                     A, B, dtype, device, p, mask)


projection_args = st.tuples(seeds, ranks, st.integers(1, 300), st.integers(1, 300), st.integers(0, 9))
