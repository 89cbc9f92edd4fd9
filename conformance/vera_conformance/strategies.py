"""Hypothesis strategies for the conformance checks (shapes, seeds, values, dtypes).

A layer case is drawn as a small JSON-able *spec* (sizes, seeds, flags) and built
deterministically by ``build_case``, so every failure can be replayed exactly from its
spec (``--case``) by anyone.

Sizes reach the code paths real kernels switch on (spec 5.4): most draws are small,
about a third sit on tile and GEMM boundaries (r around 41, 64, 65, 128, 256, 1024;
in/out around 64, 65, 127-129, 768; N around 7-9, 16, 17, 64, 128), and ``EXPLICIT``
lists boundary cases every layer check runs first, whatever --max-examples says.

Two levels (``thorough()``): the default keeps a run fast (heavy sizes rare, the largest layer
1024 x 768); ``--thorough`` adds ``THOROUGH_EXPLICIT`` (real layers: in and out up to 16384 with
n_in = n_out = 16384, r up to 1024) to every layer check and draws real sizes more often. The
``numerics`` check (checks_numeric) runs its own real-size cases at both levels.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
from hypothesis import strategies as st

import vera_ref
from vera_ref.dtypes import round_to

from .protocol import LAYOUTS, LayerCase

_LEVEL = {"thorough": False}


def thorough() -> bool:
    """True inside ``level(True)``: more and larger cases (the runner's --thorough)."""
    return _LEVEL["thorough"]


@contextlib.contextmanager
def level(thorough_: bool) -> Iterator[None]:
    old = _LEVEL["thorough"]
    _LEVEL["thorough"] = bool(thorough_)
    try:
        yield
    finally:
        _LEVEL["thorough"] = old

seeds = st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 1, 2**32 - 1, 2**32, 2**64 - 1]))
# ranks include 1 and values not divisible by 4 (spec 1.4: the last counter is partly used)
ranks = st.one_of(st.sampled_from([1, 2, 3, 4, 5, 7, 8]), st.integers(1, 40))
R_EDGES = (31, 32, 33, 41, 63, 64, 65, 127, 128, 129, 256)
F_EDGES = (15, 16, 17, 63, 64, 65, 127, 128, 129, 255, 256, 257)
N_EDGES = (7, 8, 9, 15, 16, 17, 31, 32, 33, 64, 128)
HEAVY_R, HEAVY_F = (512, 1023, 1024), (767, 768, 769)
SHAPE_KEYS = ("r", "in_features", "out_features", "N")


def _spec(size: dict, *, seed: int | str, n_in_pad=0, n_out_pad=0, group=0, layout="linear", bias=True,
          scale=1.0, values_seed=1, dropout=0.0) -> dict:
    return {"seed": str(seed), "r": size["r"], "in_features": size["in_features"],
            "out_features": size["out_features"], "n_in": size["in_features"] + n_in_pad,
            "n_out": size["out_features"] + n_out_pad, "group": group, "layout": layout, "N": size["N"],
            "bias": bias, "scale": scale, "values_seed": values_seed, "dropout": dropout}


def _size(r, i, o, n):
    return {"r": r, "in_features": i, "out_features": o, "N": n}


# boundary cases run first by every layer check (spec 5.4): rank tails, tile tails, GEMM switches
EXPLICIT = [
    _spec(_size(41, 65, 129, 17), seed=2**64 - 1, n_in_pad=3, layout="conv1d"),
    _spec(_size(64, 64, 64, 16), seed=7, bias=False),
    _spec(_size(65, 127, 63, 9), seed=12345, n_out_pad=1, layout="conv1d", values_seed=2),
    _spec(_size(256, 128, 768, 8), seed=2**32, values_seed=3),
    _spec(_size(1024, 768, 129, 7), seed=99, values_seed=4),
]
# --thorough: real layers (sizes of 1-16k rows and columns, the shared projection at 16384, r up to 1024)
THOROUGH_EXPLICIT = [
    _spec(_size(1024, 4096, 4096, 8), seed=2**64 - 2, n_in_pad=12288, n_out_pad=12288, values_seed=11),
    _spec(_size(256, 16384, 1024, 4), seed=77, n_out_pad=15360, layout="conv1d", values_seed=12),
    _spec(_size(64, 1024, 16384, 3), seed=2**40, n_in_pad=15360, bias=False, values_seed=13),
]
REAL_R, REAL_F = (256, 512, 1024), (1024, 2048, 4096)


@st.composite
def sizes(draw) -> dict:
    """(r, in, out, N): small, on a boundary, or (rarely) heavy."""
    kind = draw(st.sampled_from(["small"] * 6 + ["edge"] * 3 + ["heavy"] + (["real"] if thorough() else [])))
    if kind == "small":
        return _size(draw(ranks), draw(st.integers(1, 48)), draw(st.integers(1, 48)), draw(st.integers(1, 6)))
    if kind == "edge":
        return _size(draw(st.sampled_from(R_EDGES)), draw(st.sampled_from(F_EDGES)), draw(st.sampled_from(F_EDGES)),
                     draw(st.sampled_from(N_EDGES)))
    if kind == "real":  # out * in at most 4096 * 1024: seconds, not minutes, per case
        i = draw(st.sampled_from(REAL_F))
        return _size(draw(st.sampled_from(REAL_R)), i, draw(st.sampled_from(REAL_F if i == 1024 else F_EDGES)),
                     draw(st.sampled_from(N_EDGES[:6])))
    return _size(draw(st.sampled_from(HEAVY_R)), draw(st.sampled_from(HEAVY_F)), draw(st.sampled_from(F_EDGES)),
                 draw(st.sampled_from(N_EDGES[:6])))


@st.composite
def case_specs(draw, dropout: bool = True, layouts=LAYOUTS, dropout_p=None) -> dict:
    """Sizes and seeds of one layer case. Layers are often smaller than the shared projection
    (n_in > in_features, n_out > out_features), so the leading-slice rule (spec 2.3) and A's
    bound from n_in (spec 1.6) are exercised. ``dropout_p`` forces a dropout probability."""
    size = draw(sizes())
    if dropout_p is not None:
        p = dropout_p
    else:
        p = draw(st.sampled_from([0.0, 0.0, 0.0, 0.1, 0.5])) if dropout else 0.0
    return _spec(size, seed=draw(seeds), n_in_pad=draw(st.sampled_from([0, 0, 1, 3, 17])),
                 n_out_pad=draw(st.sampled_from([0, 0, 1, 5, 16])), group=draw(st.sampled_from([0, 0, 0, 1, 7])),
                 layout=draw(st.sampled_from(sorted(layouts))), bias=draw(st.booleans()),
                 scale=draw(st.sampled_from([1.0, 1.0, 0.01, 30.0])), values_seed=draw(st.integers(0, 2**32 - 1)),
                 dropout=p)


def explicit(layouts=LAYOUTS, dropout: bool = True) -> list[dict]:
    """EXPLICIT with layouts the implementation lacks swapped for one it has."""
    out = []
    for s in EXPLICIT + (THOROUGH_EXPLICIT if thorough() else []):
        s = dict(s)
        if s["layout"] not in layouts:
            s["layout"] = sorted(layouts)[0]
        out.append(s)
    return out


def storage(dtype: str) -> str:
    """The dtype values of ``dtype`` are stored in (tf32 computes on binary32 values, spec 5.2.2)."""
    return "float32" if dtype == "tf32" else dtype


def build_case(spec: dict, dtype: str, device: str) -> LayerCase:
    """The arrays of a case spec, rounded to ``dtype`` (the reference sees the same values)."""
    rng = np.random.default_rng(spec["values_seed"])
    N, in_f, out_f, r = spec["N"], spec["in_features"], spec["out_features"], spec["r"]
    scale = 1.0 if dtype == "float16" else spec["scale"]  # float16 overflows at 65504
    sdt = storage(dtype)

    def vals(*shape, s=1.0):
        return round_to(rng.normal(size=shape) * s, sdt).astype(np.float64)

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


projection_args = st.tuples(seeds, st.one_of(ranks, st.sampled_from(R_EDGES + HEAVY_R[:1])),
                            st.one_of(st.integers(1, 300), st.sampled_from(F_EDGES + HEAVY_F)),
                            st.one_of(st.integers(1, 300), st.sampled_from(F_EDGES)), st.integers(0, 9))
