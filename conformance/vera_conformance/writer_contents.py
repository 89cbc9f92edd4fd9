"""What the writer checks hand a writer (checks_writer.py): content specs, small JSON-able dicts a
failure prints and ``--case`` replays, drawn by hypothesis or fixed, and the ``LoadedAdapter`` each
one builds deterministically (every field of spec 4.3-4.5 away from its default somewhere)."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

import vera_ref
from vera_ref.adapter import base_fingerprint
from vera_ref.dtypes import round_to

from .protocol import LoadedAdapter

VDTYPES = ("float32", "float16", "bfloat16", "float64")
CASE_KEYS = ("r", "generator", "seed", "sharing", "vector_dtype", "tensor_layout", "modules", "d_initial",
             "dropout", "provenance", "base_model", "base", "extra", "values_seed")

# --- contents: what a writer is asked to write ------------------------------------------------------

_PREFIXES = ["", "model.", "model.layers.", "transformer.h.0.", "encoder.layer-1.attention.self."]
_LEAVES = [["q"], ["v"], ["attn", "q"], ["attn", "v"], ["mlp", "fc_1"], ["0", "c_attn"], ["1", "c_attn"]]
_KEY_CHARS = st.characters(min_codepoint=0x20, exclude_categories=("Cs",))
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(_KEY_CHARS, max_size=6), inner, max_size=3),
    max_leaves=8)


@st.composite
def _contents(draw, layouts, base=None, extras=True):
    """A content spec (JSON, replayable with --case); ``_content`` builds the LoadedAdapter."""
    gen = draw(st.sampled_from(["philox4x32-10", "philox4x32-10", "peft-mt19937", "stored"]))
    prefix = draw(st.sampled_from(_PREFIXES))
    leaves = draw(st.lists(st.sampled_from(_LEAVES), min_size=1, max_size=4, unique_by=tuple))
    mods = [[prefix + ".".join(leaf), draw(st.integers(1, 12)), draw(st.integers(1, 12)),
             draw(st.sampled_from(sorted(layouts)))] for leaf in leaves]
    extra = []
    if extras and draw(st.booleans()):
        extra = [["classifier.weight", draw(st.sampled_from(VDTYPES)), [2, 3]],
                 ["classifier.bias", draw(st.sampled_from(VDTYPES)), [2]]][:draw(st.integers(1, 2))]
    bm = draw(st.one_of(st.none(), st.fixed_dictionaries(
        {"name": st.sampled_from(["roberta-base", "gpt2", "m\u00f6del/\u6a21\u578b \"v1\""])},
        optional={"revision": st.text(max_size=12)})))
    return {"r": draw(st.integers(1, 9)), "generator": gen,
            "seed": str(draw(st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 2**53 + 1, 2**64 - 1])))),
            "sharing": "shared" if gen == "peft-mt19937" else draw(st.sampled_from(["shared", "per-module"])),
            "vector_dtype": draw(st.sampled_from(VDTYPES)),
            "tensor_layout": draw(st.sampled_from(["per-module", "packed"])), "modules": mods,
            "d_initial": draw(st.sampled_from([0.1, 0.0, 1.0, -0.5, 1 / 3, 2.5e-7]) | st.floats(-4, 4)),
            "dropout": draw(st.sampled_from([0.0, 0.1, 0.5]) | st.floats(0, 0.999)),
            "provenance": draw(st.dictionaries(st.text(_KEY_CHARS, max_size=8), _JSON, max_size=4)),
            "base_model": bm, "base": base or draw(st.sampled_from(["known", "unknown", "given"])),
            "extra": extra, "values_seed": draw(st.integers(0, 2**32 - 1))}


def _content(spec: dict, float32_values: bool = False) -> LoadedAdapter:
    """The LoadedAdapter of a content spec. ``base``: "known" gives base_weights (W0 in each layer's
    layout); "given" a base_model.fingerprint copied from elsewhere (a file read before); "unknown"
    neither. ``float32_values``: vectors exactly representable in binary32 whatever vector_dtype."""
    rng = np.random.default_rng(spec["values_seed"])
    vdt = spec["vector_dtype"]
    mods = [(str(n), int(i), int(o), str(lay)) for n, i, o, lay in spec["modules"]]

    def values(n, dtype):
        v = rng.normal(size=n)
        return round_to(round_to(v, "float32") if float32_values else v, dtype).astype(np.float64)
    weights = {n: round_to(rng.normal(size=(o, i) if lay == "linear" else (i, o)), "float32").astype(np.float64)
               for n, i, o, lay in mods}
    base_model = None if spec["base_model"] is None else dict(spec["base_model"])
    if spec["base"] == "given":
        base_model = {**(base_model or {}),
                      "fingerprint": base_fingerprint(weights, [vera_ref.ModuleSpec(*m) for m in mods])}
    stored = {}
    if spec["generator"] == "stored":  # spec 2.5.2: A (r, n_in_g), B (n_out_g, r) float32 per group
        r = spec["r"]
        groups = ([(0, max(m[1] for m in mods), max(m[2] for m in mods))] if spec["sharing"] == "shared"
                  else [(i + 1, m[1], m[2]) for i, m in enumerate(mods)])
        stored = {g: (rng.uniform(-1, 1, (r, i)).astype(np.float32), rng.uniform(-1, 1, (o, r)).astype(np.float32))
                  for g, i, o in groups}
    return LoadedAdapter(
        spec["r"], spec["generator"], None if spec["generator"] == "stored" else int(spec["seed"]), mods,
        {m[0]: values(spec["r"], vdt) for m in mods}, {m[0]: values(m[2], vdt) for m in mods}, vdt,
        {n: values(tuple(shape), dt).reshape(shape) for n, dt, shape in spec["extra"]}, spec["sharing"],
        spec["tensor_layout"], float(spec["d_initial"]), float(spec["dropout"]), dict(spec["provenance"]),
        base_model, {n: dt for n, dt, _ in spec["extra"]}, weights if spec["base"] == "known" else None, stored)


def _explicit(layouts, base=None) -> list[dict]:
    """Fixed contents first: every default at its default (nothing optional to write); names whose
    common prefix of whole parts ("x.") is shorter than their common characters ("x.h"), out of
    name order, non-ASCII text, a conv1d module, packed vectors; one module of one part."""
    lay = sorted(layouts)
    conv = "conv1d" if "conv1d" in lay else lay[0]
    common = {"seed": str(2**64 - 1), "provenance": {}, "base_model": None, "extra": [], "d_initial": 0.1,
              "dropout": 0.0, "tensor_layout": "per-module", "sharing": "shared", "generator": "philox4x32-10"}
    return [
        {**common, "r": 4, "vector_dtype": "float32", "base": base or "unknown", "values_seed": 1,
         "modules": [["model.layers.0.attn.q", 7, 5, lay[0]], ["model.layers.0.attn.v", 3, 9, lay[0]]]},
        {**common, "r": 3, "vector_dtype": "bfloat16", "base": base or "known", "values_seed": 2,
         "sharing": "per-module", "tensor_layout": "packed", "d_initial": 1e-3, "dropout": 0.05,
         "modules": [["x.h.1.c", 5, 2, lay[0]], ["x.h.0.c", 4, 6, conv], ["x.hh.0.c", 2, 2, lay[0]]],
         "provenance": {"trainer": "caf\u00e9 \u2713 \U0001F600", "steps": 250, "lr": 0.003, "tags": ["x", None, True],
                        "nested": {"b": 1, "a": [1.5, {"z": 0, "y": "\n\t\\\""}]},
                        "\uffff": "sorted before U+1F600 by code point, after it in UTF-16", "\U0001F600": 0},
         "base_model": {"name": "gpt2", "revision": "e7da7f2"},
         "extra": [["classifier.bias", "float16", [2]], ["classifier.weight", "float64", [2, 3]]]},
        {**common, "r": 1, "vector_dtype": "float64", "base": base or "given", "values_seed": 3,
         "generator": "peft-mt19937", "seed": "0", "modules": [["q", 1, 1, lay[-1]]],
         "base_model": {"name": "m\u00f6del"}},
        {**common, "r": 2, "vector_dtype": "float16", "base": base or "unknown", "values_seed": 4,
         "generator": "stored", "sharing": "per-module", "modules": [["h.0.q", 3, 4, lay[0]], ["h.0.v", 5, 2, conv]]},
    ]
