"""Regenerate and check the language-neutral test vectors of spec 6.

    python -m vera_ref.vectors --write     # rewrite spec/vectors/ from the reference
    python -m vera_ref.vectors --check     # regenerate in memory, fail on any difference
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, container
from .adapter import Adapter, base_fingerprint, build_adapter, new_adapter, save_adapter, tensor_plan
from .errors import AdapterFileError
from .layer import backward, forward, merge
from .jsontext import MAX_STRUCTURAL, structural_count
from .metadata import (CONFIG_KEY, FORMAT_KEY, FORMAT_NAME, SPEC_TEXT_VERSION, SPEC_VERSION, VERSION_KEY,
                       config_document, ModuleSpec)
from .peft_mt19937 import peft_projection
from .projection import kaiming_bound, projection, table_words
from .tolerance import backward_magnitude, forward_magnitude, merge_magnitude
from .adapter import sha256_hex
from .resources import vectors_dir
from .vectors_rules import (_doc_bytes, _drop, _edit_header, _raw, _raw_header, _set, finding_files,
                            more_order_files, order_files, step_pair_files, valid_finding_files, variant_files)

RANDOM123_SOURCE = ("DEShawResearch/random123 v1.14.0 (commit 9545ff6413f258be2f04c1d319d99aaef7521150), "
                    "files tests/kat_vectors and tests/old_kat_vectors, lines 'philox4x32 10 ...' verbatim")


def _envelope(name: str, source: str, groups: list[dict], notes: dict[str, str]) -> dict[str, Any]:
    n = 0
    for g in groups:
        for t in g["tests"]:
            n += 1
            t["tcId"] = n
    return {"schema": "vera-vectors-v1", "name": name, "source": source,
            "generatorVersion": f"vera-ref {__version__}", "specVersion": SPEC_TEXT_VERSION,
            "numberOfTests": n, "notes": notes, "testGroups": groups}


def _h32(x: int) -> str:
    return f"{int(x):08x}"


def _bits(a: np.ndarray, dtype: str) -> list:
    """Hex bits of float values: float64 -> 16 digits, float32 -> 8 digits; nested like the shape."""
    a = np.asarray(a, dtype=dtype)
    u = a.view(np.uint64 if dtype == "float64" else np.uint32)
    width = 16 if dtype == "float64" else 8
    return np.vectorize(lambda v: f"{int(v):0{width}x}", otypes=[object])(u).tolist()


def unbits(data: list, dtype: str) -> np.ndarray:
    """Inverse of ``_bits``."""
    arr = np.array(data, dtype=object)
    ints = np.vectorize(lambda s: int(s, 16), otypes=[object])(arr).astype(np.uint64)
    return ints.astype(np.uint64 if dtype == "float64" else np.uint32).view(dtype)


# --- 6.2 Philox -------------------------------------------------------------------

def philox_vectors(random123_dir: Path | None = None) -> dict[str, Any]:
    random123_dir = vectors_dir() / "random123" if random123_dir is None else random123_dir
    groups = []
    for fname in ("kat_vectors", "old_kat_vectors"):
        tests = []
        for line in (random123_dir / fname).read_text().splitlines():
            parts = line.split()
            if len(parts) == 12 and parts[0] == "philox4x32" and parts[1] == "10":
                tests.append({"comment": line.strip(), "result": "valid", "counter": parts[2:6],
                              "key": parts[6:8], "expected": parts[8:12]})
        groups.append({"type": "Philox4x32-10", "source": f"tests/{fname}", "tests": tests})
    return _envelope("philox4x32_10", RANDOM123_SOURCE, groups,
                     {"words": "8-digit lowercase hex u32; counter = (c0, c1, c2, c3), key = (k0, k1)"})


# --- 6.3 Projections ----------------------------------------------------------------

PROJECTION_CASES = [
    # (seed, r, n_in, n_out, group, comment)
    (0, 1, 1, 1, 0, "seed 0, r = 1, the smallest table"),
    (2**64 - 1, 7, 33, 65, 0, "seed 2^64-1 (key words all ones), r not divisible by 4"),
    (0, 4, 65539, 17, 0, "n_in >= 65536: feature index above 16 bits"),
    (12345678901234567890, 5, 10, 12, 3, "group 3 (per-module projections)"),
    (42, 256, 768, 768, 0, "a typical shared pair (RoBERTa-base sized)"),
    (2**32, 6, 9, 11, 1, "seed 2^32: key (0, 1)"),
]


def _samples(seed, r, n_in, n_out, group, A, B, rng) -> list[dict]:
    out = []
    for m, rows, M in ((0, n_in, A), (1, n_out, B)):
        picks = {(0, 0), (rows - 1, r - 1), (rows // 2, r // 2)}
        picks |= {(int(rng.integers(rows)), int(rng.integers(r))) for _ in range(6)}
        for n, k in sorted(picks):
            word = int(table_words(seed, m, group, (n, n + 1), (k, k + 1))[0, 0])
            val = M[k, n] if m == 0 else M[n, k]
            out.append({"matrix": "AB"[m], "row": int(k if m == 0 else n), "col": int(n if m == 0 else k),
                        "n": n, "k": k, "word": _h32(word), "bits": _h32(np.float32(val).view(np.uint32))})
    return out


def projection_vectors() -> dict[str, Any]:
    tests = []
    for seed, r, n_in, n_out, group, comment in PROJECTION_CASES:
        A, B = projection(seed, r, n_in, n_out, group)
        rng = np.random.default_rng(seed % 1000 + r)
        tests.append({"comment": comment, "result": "valid", "seed": str(seed), "r": r, "n_in": n_in,
                      "n_out": n_out, "group": group, "sha256_A": sha256_hex(A), "sha256_B": sha256_hex(B),
                      "bound_A_bits": _h32(kaiming_bound(n_in).view(np.uint32)),
                      "bound_B_bits": _h32(kaiming_bound(r).view(np.uint32)),
                      "samples": _samples(seed, r, n_in, n_out, group, A, B, rng)})
    peft = []
    for key, r, n_in, n_out in ((0, 4, 8, 6), (2**40 + 5, 3, 5, 9)):
        A, B = peft_projection(key, r, n_in, n_out)
        peft.append({"comment": "peft-mt19937 (spec 2.5.3)", "result": "valid", "seed": str(key), "r": r,
                     "n_in": n_in, "n_out": n_out, "sha256_A": sha256_hex(A), "sha256_B": sha256_hex(B),
                     "A_bits": _bits(A, "float32"), "B_bits": _bits(B, "float32")})
    return _envelope("projections", "vera_ref.projection and vera_ref.peft_mt19937 (this repository)",
                     [{"type": "Philox4x32-10Projection", "tests": tests},
                      {"type": "PeftMt19937Projection", "tests": peft}],
                     {"sha256": "of the float32 little-endian row-major bytes (spec 2.6)",
                      "samples": "word = T[m, g][n, k]; bits = binary32 bits of the matrix element at (row, col)"})


# --- 6.4 Math --------------------------------------------------------------------------

def _math_case(seed: int, dtype: str, layout: str, dropout: float, comment: str) -> dict:
    rng = np.random.default_rng(seed)
    N, in_f, out_f, r = 3, 5, 4, 3
    A, B = projection(seed, r, in_f + 1, out_f + 2)  # larger than the layer: the slice rule applies
    def draw(*shape):
        return rng.normal(size=shape).astype(dtype).astype(np.float64)
    x, dy = draw(N, in_f), draw(N, out_f)
    W = draw(out_f, in_f) if layout == "linear" else draw(in_f, out_f)
    bias, ld, lb = draw(out_f), draw(r), draw(out_f)
    mask = (rng.random((N, in_f)) >= dropout).astype(np.float64) if dropout else None
    kw = dict(layout=layout, dropout_mask=mask, dropout=dropout)
    y = forward(x, W, bias, A, B, ld, lb, **kw)
    g = backward(x, W, A, B, ld, lb, dy, **kw)
    Wm = merge(W, A, B, ld, lb, layout=layout)
    S_y = forward_magnitude(x, W, bias, A, B, ld, lb, **kw)
    S_g = backward_magnitude(x, W, A, B, ld, lb, dy, **kw)
    S_m = merge_magnitude(W, A, B, ld, lb, layout=layout)
    enc = lambda a: {"shape": list(np.shape(a)), "bits": _bits(np.asarray(a, dtype=dtype), dtype)}
    ref = lambda a: {"shape": list(np.shape(a)), "bits": _bits(a, "float64")}
    case = {"comment": comment, "result": "valid", "dtype": dtype, "layout": layout, "dropout": dropout,
            "seed": str(seed), "r": r, "n_in": in_f + 1, "n_out": out_f + 2,
            "inputs": {"x": enc(x), "W": enc(W), "bias": enc(bias), "lambda_d": enc(ld), "lambda_b": enc(lb),
                       "dy": enc(dy)},
            "expected": {"y": ref(y), "dx": ref(g.x), "dlambda_d": ref(g.lambda_d), "dlambda_b": ref(g.lambda_b),
                         "W_merged": ref(Wm)},
            "magnitude": {"y": ref(S_y), "dx": ref(S_g.x), "dlambda_d": ref(S_g.lambda_d),
                          "dlambda_b": ref(S_g.lambda_b), "W_merged": ref(S_m)}}
    if mask is not None:
        case["inputs"]["dropout_mask"] = {"shape": list(mask.shape), "bits": _bits(mask, dtype)}
    return case


def math_vectors() -> dict[str, Any]:
    tests = [
        _math_case(1, "float64", "linear", 0.0, "float64, linear, slices of a larger projection"),
        _math_case(2, "float32", "linear", 0.0, "float32 inputs, linear"),
        _math_case(3, "float32", "conv1d", 0.0, "float32 inputs, transposed Conv1D layout"),
        _math_case(4, "float64", "linear", 0.25, "float64 with a dropout mask, p = 0.25"),
    ]
    return _envelope("math", "vera_ref.layer (this repository), float64 reference",
                     [{"type": "VeraLayer", "tests": tests}],
                     {"check": "spec 5.2 with the case's dtype: |got - expected| <= C * eps * magnitude + tiny, C of spec 5.2.3 for the output's quantity and the case's sizes",
                      "bits": "inputs as bits of the case dtype; expected and magnitude as float64 bits",
                      "projection": "A, B = projection(seed, r, n_in, n_out); the layer uses the leading slices"})


# --- 6.5 Files ---------------------------------------------------------------------------

def _valid_adapters() -> list[tuple[str, Adapter]]:
    rng = np.random.default_rng(7)
    out = []
    a = new_adapter([("encoder.layer.0.attention.query", 16, 16), ("h.0.attn.c_attn", 16, 24, "conv1d")], r=4)
    for m in a.config.modules:
        a.lambda_d[m.name] = rng.normal(size=4).astype(np.float32)
        a.lambda_b[m.name] = rng.normal(size=m.out_features).astype(np.float32)
    out.append(("shared philox4x32-10, float32 vectors, linear and conv1d layouts", a))
    b = new_adapter([("q", 8, 8), ("v", 8, 8)], r=3, seed=2**64 - 1, vector_dtype="bfloat16")
    b.lambda_b["q"] = np.array([1.5, -2.0, 0.0078125, 3, 4, 5, 6, -7], dtype=np.float32)
    out.append(("seed 2^64-1, bfloat16 vectors", b))
    c = new_adapter([("a", 6, 5), ("b", 7, 3)], r=5, seed=9, sharing="per-module", vector_dtype="float16")
    c.lambda_b["b"] = np.array([0.5, -0.25, 1e-3], dtype=np.float16)
    out.append(("per-module projections (groups 1 and 2), float16 vectors", c))
    A = rng.normal(size=(2, 4)).astype(np.float32)
    B = rng.normal(size=(3, 2)).astype(np.float32)
    d = new_adapter([("fc", 4, 3)], r=2, generator="stored", stored={0: (A, B)}, vector_dtype="float64")
    d.lambda_b["fc"] = np.array([0.1, 0.2, 0.3])
    out.append(("stored projections, float64 vectors", d))
    e = new_adapter([("query", 8, 8), ("value", 8, 8)], r=4, seed=0, generator="peft-mt19937")
    out.append(("peft-mt19937 generator (PEFT projection_prng_key = 0)", e))
    W = {"l1": rng.normal(size=(5, 4)), "l2": rng.normal(size=(5, 4))}
    mods = [ModuleSpec("l1", 4, 5), ModuleSpec("l2", 4, 5)]
    f = new_adapter(mods, r=2, seed=3, base_model={"name": "toy", "revision": "1",
                                                    "fingerprint": base_fingerprint(W, mods)},
                    provenance={"trainer": "vectors.py", "note": "task head in extra tensors"})
    f.extra["classifier.weight"] = (rng.normal(size=(2, 5)).astype(np.float32), "float32")
    f.extra["classifier.bias"] = (np.zeros(2, dtype=np.float16), "float16")
    out.append(("extra tensors (task head), base-model fingerprint, provenance", f))
    g = new_adapter([(f"model.layers.{i}.self_attn.{n}", 12, 8 if n == "q_proj" else 4) for i in range(2)
                     for n in ("q_proj", "v_proj")], r=3, seed=11, tensor_layout="packed")
    for i, m in enumerate(g.config.modules):
        g.lambda_b[m.name] = np.arange(m.out_features, dtype=np.float32) + 100 * i
        g.lambda_d[m.name] = np.full(3, i, dtype=np.float32)
    out.append(("packed tensor layout: lambda_d (M, r) and lambda_b concatenated in module order", g))
    h = new_adapter([("x.q", 4, 4)], r=2, seed=5, vector_dtype="float64")
    h.extra["a.bias"] = (np.array([1.0], np.float16), "float16")  # 2 bytes first: the F64 data is not 8-aligned
    out.append(("tensor data not aligned (a 2-byte tensor first): readers MUST accept it (spec 4.1)", h))
    return out


def _valid_extra_files() -> list[tuple[str, bytes]]:
    """Valid files the writer does not make: optional fields left out, a newer minor version."""
    ad = new_adapter([("enc.q", 4, 4), ("enc.v", 4, 2)], r=2, seed=8)
    ad.lambda_b["enc.v"] = np.array([0.5, -1.0], np.float32)
    minimal = _doc_bytes(ad, version="1.0", doc_edit=lambda d: (
        _drop("module_prefix", "tensor_layout", "d_initial", "dropout", "extra_tensors", "provenance")(d),
        d.__setitem__("modules", [["enc.q", 4, 4], ["enc.v", 4, 2]])))
    ad2 = new_adapter([("q", 4, 4)], r=2, seed=8)
    newer = _doc_bytes(ad2, version="1.9", doc_edit=lambda d: d.update(
        future_field={"added": "in 1.9"}, alpha=16), meta_edit=lambda m: m.update(
        format="pt", trainer_note="unknown __metadata__ keys are ignored (spec 4.2)"))
    spaced = _doc_bytes(new_adapter([("q", 4, 4)], r=2, seed=1), doc_text=lambda t: "\n " + json.dumps(
        json.loads(t), indent=2) + "\n")
    unicode = _doc_bytes(new_adapter([("q", 4, 4)], r=2, seed=4, provenance={
        "emoji": "\U0001F600", "text": "\\udc80 is six characters, not an escape", "bmp": "\ud7ff\ue000"}),
        meta_edit=lambda m: m.update({"note \U0001F600": "\U0001F4A1 \\ud800"}))
    return [("optional fields left out (module_prefix, tensor_layout, d_initial, dropout, extra_tensors, "
             "provenance), version 1.0", minimal),
            ("minor version 1.9 with unknown fields (ignored, spec 4.8) and unknown __metadata__ keys", newer),
            ("a metadata document with insignificant whitespace (readers accept any dialect-valid JSON)",
             spaced),
            ("surrogate pairs (\\ud83d\\ude00) in __metadata__ and in the document, and escaped backslashes "
             "before 'udc80' (text, not an escape): Unicode text, accepted (spec 4.1.1 rule 4, 1.2)", unicode)]


def _escaped_commas(ad: Adapter) -> bytes:
    """A file whose document has 2^20 + 1 structural characters (commas in a provenance note) while
    its header has 2^20 or 2^20 - 1 structural bytes: the header writes a few commas as \\u002c
    escapes (six bytes, none structural)."""
    def note(d):
        d["provenance"] = {"note": ""}
        text = json.dumps(d, sort_keys=True, separators=(",", ":"))
        d["provenance"]["note"] = "," * (MAX_STRUCTURAL + 1 - structural_count(text))
    data = _doc_bytes(ad, doc_edit=note)

    def escape(text: str) -> str:  # as few escapes as bring the header to exactly 2^20 structural bytes
        pairs = (structural_count(text) - MAX_STRUCTURAL + 1) // 2
        return text.replace(",,", "\\u002c\\u002c", pairs)
    return _edit_header(data, escape)


def _invalid_files() -> list[tuple[str, str, bytes]]:
    """(expected code, comment, bytes): one or more per rule of spec 4.6 that a file can break."""
    base = lambda: new_adapter([("q", 8, 8), ("v", 8, 4)], r=4, seed=1)  # noqa: E731
    packed = lambda: new_adapter([("q", 8, 8), ("v", 8, 4)], r=4, seed=1, tensor_layout="packed")  # noqa: E731
    rng = np.random.default_rng(3)
    stored = lambda: new_adapter([("fc", 4, 3)], r=2, generator="stored", stored={  # noqa: E731
        0: (rng.normal(size=(2, 4)).astype(np.float32), rng.normal(size=(3, 2)).astype(np.float32))})
    P = lambda **kw: _doc_bytes(base(), **kw)  # noqa: E731
    meta_ok = {FORMAT_KEY: FORMAT_NAME, VERSION_KEY: SPEC_VERSION}
    meta_json = json.dumps(meta_ok, separators=(",", ":"))
    f32 = lambda shape, off: {"dtype": "F32", "shape": shape, "data_offsets": off}  # noqa: E731
    H = lambda entries, data=b"": _raw_header({"__metadata__": meta_ok, **entries}, data)  # noqa: E731
    deep = lambda n: "[" * n + "]" * n  # noqa: E731
    return [
        ("E4.6.1.1", "file shorter than the length prefix", b"\x10\x00\x00"),
        ("E4.6.2.1", "an ONNX model (ModelProto: ir_version 8, producer_name 'pytorch')",
         b"\x08\x08\x12\x07pytorch\x1a\x052.5.1:\x10\n\x0e\n\x01x\x12\x01y\x1a\x04Relu"),
        ("E4.6.2.2", "a zip archive (a PyTorch .pt/.bin checkpoint is one)",
         b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + b"\x00" * 20 + b"archive/data.pkl"),
        ("E4.6.2.3", "header length of 2^40 bytes", (1 << 40).to_bytes(8, "little") + b"{}"),
        ("E4.6.2.3", "header length of 100,000,001 bytes (safetensors' limit is 100,000,000)",
         (100_000_001).to_bytes(8, "little") + b"{}"),
        ("E4.6.3.1", "header length past the end of the file", _raw(b'{"__metadata__":{}}', length=4096)),
        ("E4.6.4.1", "header begins with a UTF-8 byte-order mark",
         _raw(b'\xef\xbb\xbf{"__metadata__":' + meta_json.encode() + b"}")),
        ("E4.6.4.1", "header begins with whitespace", _raw(b' {"__metadata__":' + meta_json.encode() + b"}")),
        ("E4.6.4.2", "header of 1,048,577 '[' bytes (more than 2^20 structural bytes)",
         _raw(b"{" + b"[" * 1_048_576)),
        ("E4.6.4.3", "header is not UTF-8", _raw(b'{"__metadata__":{"k":"\xff\xfe"}}')),
        ("E4.6.4.4", "header is not JSON", _raw(b"{nope")),
        ("E4.6.4.4", "header holds a NaN literal", _raw(b'{"__metadata__":{},"x":NaN}')),
        ("E4.6.4.4", "header with a trailing comma", _raw(b'{"__metadata__":{},}')),
        ("E4.6.4.5", "header nested 66 levels deep", _raw(b'{"__metadata__":{},"x":' + deep(65).encode() + b"}")),
        ("E4.6.4.6", "shape holds 2^64, beyond the integer range", H({"q.lambda_d": f32([2**64], [0, 4])})),
        ("E4.6.4.6", "a number literal 1e400 (infinite in binary64)", _raw(b'{"__metadata__":{},"x":1e400}')),
        ("E4.6.4.7", "duplicate key __metadata__ in the header",
         _raw(b'{"__metadata__":{},"__metadata__":' + meta_json.encode() + b"}")),
        ("E4.6.5.1", "no __metadata__", _raw_header({})),
        ("E4.6.5.2", "__metadata__ value not a string", _raw_header({"__metadata__": {"vera_format": 1}})),
        ("E4.6.6.1", "tensor entry without data_offsets", H({"q.lambda_d": {"dtype": "F32", "shape": [4]}})),
        ("E4.6.6.2", "tensor dtype I8", H({"q.lambda_d": {"dtype": "I8", "shape": [4], "data_offsets": [0, 4]}},
                                          b"\0" * 4)),
        ("E4.6.6.2", "tensor dtype given as a JSON list",
         H({"q.lambda_d": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4)),
        ("E4.6.6.3", "negative dimension", H({"q.lambda_d": f32([-1], [0, 4])}, b"\0" * 4)),
        ("E4.6.6.4", "17 dimensions", H({"q.lambda_d": f32([1] * 17, [0, 4])}, b"\0" * 4)),
        ("E4.6.6.5", "data_offsets with one number", H({"q.lambda_d": f32([1], [4])}, b"\0" * 4)),
        ("E4.6.6.6", "shape [2^62, 2^62]: a size past any 64-bit integer",
         H({"q.lambda_d": f32([2**62, 2**62], [0, 4])}, b"\0" * 4)),
        ("E4.6.6.6", "tensor larger than the whole data section",
         H({"q.lambda_d": f32([1000000], [0, 4000000])}, b"\0" * 16)),
        ("E4.6.6.7", "data_offsets disagree with the shape", H({"q.lambda_d": f32([4], [0, 8])}, b"\0" * 16)),
        ("E4.6.6.8", "data_offsets run past the end of the data", H({"q.lambda_d": f32([2], [8, 16])}, b"\0" * 12)),
        ("E4.6.7.1", "gap between tensors", H({"a": f32([1], [0, 4]), "b": f32([1], [8, 12])}, b"\0" * 12)),
        ("E4.6.7.1", "overlapping tensors", H({"a": f32([2], [0, 8]), "b": f32([1], [4, 8])}, b"\0" * 8)),
        ("E4.6.7.2", "bytes after the last tensor", H({"a": f32([1], [0, 4])}, b"\0" * 8)),
        ("E4.6.8.1", "a PEFT VeRA adapter (adapter_model.safetensors)",
         _raw_header({"__metadata__": {"format": "pt"},
                      "base_model.model.q.vera_lambda_b.default": f32([2], [0, 8])}, b"\0" * 8)),
        ("E4.6.8.2", "a plain safetensors file (no vera_format)",
         _raw_header({"__metadata__": {"format": "pt"}, "weight": f32([2], [0, 8])}, b"\0" * 8)),
        ("E4.6.8.3", "bad magic", P(meta_edit=_set(FORMAT_KEY, "pt"))),
        ("E4.6.9.1", "no vera_spec_version", P(meta_edit=_drop(VERSION_KEY))),
        ("E4.6.9.2", "spec version 2.0", P(meta_edit=_set(VERSION_KEY, "2.0"))),
        ("E4.6.9.2", "spec version of 5,000 digits", P(meta_edit=_set(VERSION_KEY, "1" * 5000 + ".0"))),
        ("E4.6.10.1", "no vera_config", P(meta_edit=_drop(CONFIG_KEY))),
        ("E4.6.10.3", "vera_config is not JSON", P(meta_edit=_set(CONFIG_KEY, "{r: 4"))),
        ("E4.6.10.3", "vera_config holds Infinity", P(doc_text=lambda t: t.replace('"d_initial":0.1',
                                                                                   '"d_initial":Infinity'))),
        ("E4.6.10.4", "provenance nested 65 levels deep (the document 66)",
         P(doc_text=lambda t: t.replace('"provenance":{}', '"provenance":{"x":' + deep(64) + "}"))),
        ("E4.6.10.5", "d_initial = 1e400", P(doc_text=lambda t: t.replace('"d_initial":0.1', '"d_initial":1e400'))),
        ("E4.6.10.5", "r of 5,000 digits", P(doc_text=lambda t: t.replace('"r":4', '"r":' + "9" * 5000))),
        ("E4.6.10.6", "duplicate key r (last-wins parsers would read r = 4)",
         P(doc_text=lambda t: t.replace('"r":4', '"r":999,"r":4'))),
        ("E4.6.10.7", "vera_config is a JSON array", P(meta_edit=_set(CONFIG_KEY, "[]"))),
        ("E4.6.11.1", "unknown field in the document", P(doc_edit=_set("alpha", 8))),
        ("E4.6.12.1", "r missing", P(doc_edit=_drop("r"))),
        ("E4.6.12.2", "r = 0", P(doc_edit=_set("r", 0))),
        ("E4.6.12.2", "r as a string", P(doc_edit=_set("r", "4"))),
        ("E4.6.13.1", "generator missing", P(doc_edit=_drop("generator"))),
        ("E4.6.13.2", "unknown generator", P(doc_edit=_set("generator", "xorshift128"))),
        ("E4.6.14.1", "seed with the stored generator", P(doc_edit=_set("generator", "stored"))),
        ("E4.6.14.2", "seed missing", P(doc_edit=_drop("seed"))),
        ("E4.6.14.3", "seed 2^64, out of range", P(doc_edit=_set("seed", "18446744073709551616"))),
        ("E4.6.14.3", "seed as a JSON number", P(doc_edit=_set("seed", 1))),
        ("E4.6.14.3", "seed with a leading zero", P(doc_edit=_set("seed", "01"))),
        ("E4.6.15.1", "sharing missing", P(doc_edit=_drop("sharing"))),
        ("E4.6.15.2", "unknown sharing", P(doc_edit=_set("sharing", "none"))),
        ("E4.6.15.3", "peft-mt19937 with per-module sharing",
         P(doc_edit=lambda d: d.update(generator="peft-mt19937", sharing="per-module"))),
        ("E4.6.16.1", "module_prefix not ending in '.'", P(doc_edit=_set("module_prefix", "model"))),
        ("E4.6.16.2", "modules missing", P(doc_edit=_drop("modules"))),
        ("E4.6.16.3", "modules empty", P(doc_edit=_set("modules", []))),
        ("E4.6.16.4", "module entry as an object", P(doc_edit=lambda d: d["modules"].__setitem__(
            0, {"name": "q", "in_features": 8, "out_features": 8}))),
        ("E4.6.16.5", "module name with an empty part", P(doc_edit=lambda d: d["modules"][0].__setitem__(0, "a..b"))),
        ("E4.6.16.6", "duplicate module", P(doc_edit=lambda d: d["modules"].append(list(d["modules"][0])))),
        ("E4.6.16.7", "in_features = 0", P(doc_edit=lambda d: d["modules"][0].__setitem__(1, 0))),
        ("E4.6.16.8", "out_features as a string", P(doc_edit=lambda d: d["modules"][1].__setitem__(2, "4"))),
        ("E4.6.16.9", "bad layout", P(doc_edit=lambda d: d["modules"][0].append("conv2d"))),
        ("E4.6.17.1", "n_in missing", P(doc_edit=_drop("n_in"))),
        ("E4.6.17.2", "n_in = 0", P(doc_edit=_set("n_in", 0))),
        ("E4.6.17.3", "n_out missing", P(doc_edit=_drop("n_out"))),
        ("E4.6.17.4", "n_out negative", P(doc_edit=_set("n_out", -1))),
        ("E4.6.17.5", "n_in disagrees with the modules", P(doc_edit=_set("n_in", 16))),
        ("E4.6.17.6", "n_out disagrees with the modules", P(doc_edit=_set("n_out", 99))),
        ("E4.6.18.1", "vector_dtype missing", P(doc_edit=_drop("vector_dtype"))),
        ("E4.6.18.2", "vector_dtype int8", P(doc_edit=_set("vector_dtype", "int8"))),
        ("E4.6.18.3", "unknown tensor_layout", P(doc_edit=_set("tensor_layout", "interleaved"))),
        ("E4.6.19.1", "d_initial as a string", P(doc_edit=_set("d_initial", "0.1"))),
        ("E4.6.19.2", "dropout = 1", P(doc_edit=_set("dropout", 1.0))),
        ("E4.6.20.1", "extra_tensors not a list", P(doc_edit=_set("extra_tensors", "head"))),
        ("E4.6.20.2", "extra_tensors lists a name twice", P(doc_edit=_set("extra_tensors", ["h", "h"]))),
        ("E4.6.20.3", "base_model value not a string", P(doc_edit=_set("base_model", {"name": 1}))),
        ("E4.6.20.4", "unknown base_model field", P(doc_edit=_set("base_model", {"name": "x", "url": "y"}))),
        ("E4.6.20.5", "fingerprint not hex", P(doc_edit=_set("base_model", {"fingerprint": "XYZ"}))),
        ("E4.6.20.6", "provenance is a list", P(doc_edit=_set("provenance", []))),
        ("E4.6.21.1", "projection_sha256 missing", P(doc_edit=_drop("projection_sha256"))),
        ("E4.6.21.2", "checksum list for the wrong groups",
         P(doc_edit=lambda d: d["projection_sha256"][0].update(group=1))),
        ("E4.6.21.3", "checksum not hex", P(doc_edit=lambda d: d["projection_sha256"][0].update(A="zz"))),
        ("E4.6.22.1", "hostile document: a projection of 10^12 elements", P(doc_edit=lambda d: d.update(
            r=1000000, n_in=500000, n_out=500000, modules=[["q", 500000, 500000], ["v", 8, 4]]))),
        ("E4.6.23.1", "an extra tensor named like a VeRA vector",
         P(doc_edit=_set("extra_tensors", ["q.lambda_d"]))),
        ("E4.6.23.2", "missing lambda_b", P(tensor_edit=lambda p: p.pop("v.lambda_b"))),
        ("E4.6.23.3", "unexpected tensor", P(tensor_edit=_set("vera_A", (np.zeros((4, 8), np.float32), "F32")))),
        ("E4.6.24.1", "lambda_d of the wrong length", P(tensor_edit=_set(
            "q.lambda_d", (np.zeros(5, np.float32), "F32")))),
        ("E4.6.24.1", "packed lambda_b of the wrong length", _doc_bytes(packed(), tensor_edit=_set(
            "lambda_b", (np.zeros(11, np.float32), "F32")))),
        ("E4.6.24.2", "lambda dtype differs from vector_dtype", P(tensor_edit=_set(
            "q.lambda_b", (np.zeros(8, np.float16), "F16")))),
        ("E4.6.24.3", "stored projection as F64", _doc_bytes(stored(), tensor_edit=lambda p: p.__setitem__(
            "A", (p["A"][0], "F64")))),
        ("E4.6.25.1", "NaN in lambda_b", P(tensor_edit=_set(
            "v.lambda_b", (np.array([0, np.nan, 0, 0], np.float32), "F32")))),
        ("E4.6.25.1", "infinity in a BF16 vector", _doc_bytes(
            new_adapter([("q", 4, 2)], r=2, seed=1, vector_dtype="bfloat16"),
            tensor_edit=_set("q.lambda_d", (np.array([np.inf, 0], np.float32), "BF16")))),
        ("E4.6.26.1", "checksum of A does not match the generator",
         P(doc_edit=lambda d: d["projection_sha256"][0].update(A="0" * 64))),
        # several faults: the verdict is the first rule in the order of spec 4.6
        ("E4.6.4.4", "multi-fault: nested 70 deep, then a syntax error (syntax is checked first)",
         _raw(b'{"__metadata__":{},"x":' + b"[" * 70 + b"]" * 70 + b",}")),
        ("E4.6.4.6", "multi-fault: a duplicate key, then a number out of range (numbers first)",
         _raw(b'{"__metadata__":{},"__metadata__":{},"x":1e999}')),
        ("E4.6.6.3", "multi-fault: tensor 'b' has a bad dtype, tensor 'a' a bad shape (names in order)",
         H({"b": {"dtype": "I8", "shape": [1], "data_offsets": [0, 1]}, "a": f32(["x"], [1, 5])}, b"\0" * 5)),
        ("E4.6.8.3", "multi-fault: bad magic and r = 0", P(meta_edit=_set(FORMAT_KEY, "pt"), doc_edit=_set("r", 0))),
        ("E4.6.11.1", "multi-fault: unknown field and r missing", P(doc_edit=lambda d: (
            d.__setitem__("zeta", 1), d.pop("r")))),
        ("E4.6.14.3", "multi-fault: seed out of range and tensor_layout unknown", P(doc_edit=lambda d: d.update(
            seed="99999999999999999999", tensor_layout="zigzag"))),
        ("E4.6.23.2", "multi-fault: a missing tensor and an unexpected one",
         P(tensor_edit=lambda p: (p.pop("q.lambda_d"), p.__setitem__("zzz", (np.zeros(1, np.float32), "F32"))))),
        ("E4.6.24.1", "multi-fault: NaN in the first vector, a wrong shape in a later one (shapes first)",
         P(tensor_edit=lambda p: (p.__setitem__("q.lambda_b", (np.full(8, np.nan, np.float32), "F32")),
                                  p.__setitem__("v.lambda_d", (np.zeros(3, np.float32), "F32"))))),
        ("E4.6.25.1", "multi-fault: NaN in a vector and a wrong checksum (values first)",
         P(doc_edit=lambda d: d["projection_sha256"][0].update(B="0" * 64), tensor_edit=_set(
             "q.lambda_d", (np.array([np.nan, 0, 0, 0], np.float32), "F32")))),
        # spec 1.2 (appended: the files above keep their names)
        ("E4.6.10.2", "the document has 2^20 + 1 structural characters, written as \\u002c escapes in a header "
                      "that passes E4.6.4.2 (the document's own characters are counted, spec 4.1.1 rule 2)",
         _escaped_commas(base())),
        ("E4.6.4.5", "multi-fault: a value nested 65 deep, then the same key again (depth is measured on the text, "
                     "the dropped value included: not E4.6.4.7)",
         _raw(b'{"__metadata__":{},"x":' + deep(65).encode() + b',"x":1}')),
        ("E4.6.10.4", "multi-fault: provenance nested 65 deep, then provenance again (not E4.6.10.6)",
         P(doc_text=lambda t: t.replace('"provenance":{}', '"provenance":{"x":' + deep(64) + '},"provenance":{}'))),
        ("E4.6.4.4", "an unpaired surrogate escape (\\udc80) in a __metadata__ value (I-JSON strings, spec 4.1.1 "
                     "rule 4; safetensors refuses it)", P(meta_edit=_set("note", "\udc80"))),
        ("E4.6.4.4", "a high surrogate escape followed by a letter (\\ud800x) in a __metadata__ key",
         P(meta_edit=_set("\ud800x", "y"))),
        ("E4.6.4.4", "an unpaired surrogate escape in a tensor name",
         P(tensor_edit=lambda p: p.__setitem__("q.lambda_d\udc80", p.pop("q.lambda_d")))),
        ("E4.6.10.3", "an unpaired surrogate escape in base_model.name (the document's own escape)",
         P(doc_edit=_set("base_model", {"name": "\udc80"}))),
        ("E4.6.10.3", "a surrogate pair followed by an unpaired low surrogate in provenance",
         P(doc_edit=_set("provenance", {"a": "\U0001F600\udc80"}))),
        ("E4.6.4.4", "multi-fault: an unpaired surrogate, then a value nested 65 deep (rule 4 before rule 5)",
         _raw(b'{"__metadata__":{"a":"\\udc80"},"x":' + deep(65).encode() + b"}")),
        ("E4.6.10.3", "multi-fault: an unpaired surrogate in provenance and a duplicate key r (rule 4 before 7)",
         P(doc_edit=_set("provenance", {"a": "\udc80"}), doc_text=lambda t: t.replace('"r":4', '"r":4,"r":4'))),
        ("E4.6.6.6", "an F64 scalar over a 4-byte data section: the itemsize alone exceeds it (spec 4.1 Sizes)",
         H({"q.lambda_d": {"dtype": "F64", "shape": [], "data_offsets": [0, 4]}}, b"\0" * 4)),
        ("E4.6.6.6", "an F64 tensor of shape [0] over a 4-byte data section (zero-size tensors included, 4.1 Sizes)",
         H({"q.lambda_d": {"dtype": "F64", "shape": [0], "data_offsets": [0, 4]}}, b"\0" * 4)),
    ]


# the variants (spec 6.5 "Variants") that vectors made before 1.2 break on their own, by comment
EARLIER_VARIANTS = {
    "an F64 scalar over a 4-byte data section: the itemsize alone exceeds it (spec 4.1 Sizes)": ("F64",),
    "tensor larger than the whole data section": ("F32",),
    "data_offsets disagree with the shape": ("F32",),
    "seed with the stored generator": ("stored",),
    "seed missing": ("philox4x32-10",),
    "seed 2^64, out of range": ("philox4x32-10",),
    "peft-mt19937 with per-module sharing": ("peft-mt19937",),
    "checksum list for the wrong groups": ("shared",),
    "checksum not hex": ("A",),
    "hostile document: a projection of 10^12 elements": ("philox4x32-10 shared",),
    "an extra tensor named like a VeRA vector": ("lambda_d",),
    "missing lambda_b": ("lambda_b",),
    "unexpected tensor": ("unlisted name",),
    "lambda_d of the wrong length": ("lambda_d",),
    "packed lambda_b of the wrong length": ("packed lambda_b",),
    "lambda dtype differs from vector_dtype": ("lambda_b", "float32"),
    "stored projection as F64": ("A",),
    "NaN in lambda_b": ("lambda_b", "F32", "NaN"),
    "infinity in a BF16 vector": ("lambda_d", "BF16", "+inf"),
    "checksum of A does not match the generator": ("philox4x32-10", "A"),
}


def invalid_files() -> list[tuple[str, str, bytes, tuple[str, ...]]]:
    """(code, comment, bytes, variants) of every invalid file vector, in file order: those of 1.1 and
    1.2's first round, then (spec 1.2) the decided points, the orders of 4.6, a vector per rule
    per variant and the pairs of adjacent steps (``vera_ref.vectors_rules``)."""
    earlier = [(code, comment, data, EARLIER_VARIANTS.get(comment, ())) for code, comment, data in _invalid_files()]
    return earlier + finding_files() + order_files() + variant_files() + more_order_files() + step_pair_files()


UNREACHABLE_FROM_FILES = ("E4.6.0.1", "E4.6.0.2", "E4.6.0.3", "E4.6.0.4", "E4.6.0.5")  # the path (step 0)


def file_vectors() -> tuple[dict[str, Any], dict[str, bytes]]:
    files: dict[str, bytes] = {}
    valid, invalid = [], []
    for comment, ad in _valid_adapters():
        valid.append((comment, _saved_bytes(ad)))
    valid += _valid_extra_files() + valid_finding_files()
    out_valid = []
    for comment, data in valid:
        name = f"valid-{len(out_valid) + 1:02d}.safetensors"
        files[name] = data
        meta, tensors = container.parse(data)
        ad = build_adapter(meta, tensors)
        _, entries, start = container.read_header(io.BytesIO(data), len(data))
        out_valid.append({
            "comment": comment, "result": "valid", "file": name, "specVersion": meta[VERSION_KEY],
            "config": json.loads(meta[CONFIG_KEY]), "effective": config_document(ad.config),
            "tensors": {k: {"dtype": v[0], "shape": list(v[1]),
                            "sha256": hashlib.sha256(data[start + v[2]: start + v[3]]).hexdigest()}
                        for k, v in sorted(entries.items())}})
    for want, comment, data, variants in invalid_files():
        name = f"invalid-{len(invalid) + 1:03d}.safetensors"
        files[name] = data
        try:
            meta, tensors = container.parse(data)
            build_adapter(meta, tensors)
        except AdapterFileError as exc:
            if exc.code != want:
                raise RuntimeError(f"invalid file vector {name!r} ({comment}): expected {want}, got {exc.code} "
                                   f"({exc})") from None
            err = {"code": exc.code, "field": exc.field, "message": str(exc)}
        else:
            raise RuntimeError(f"invalid file vector {name!r} ({comment}) was accepted")
        invalid.append({"comment": comment, "result": "invalid", "file": name, "error": err,
                        **({"variants": list(variants)} if variants else {})})
    env = _envelope("files", "vera_ref.vectors (this repository)",
                    [{"type": "AdapterFileValid", "tests": out_valid},
                     {"type": "AdapterFileInvalid", "tests": invalid}],
                    {"files": "spec/vectors/files/<file>",
                     "config": "the metadata document as stored; effective: the document of spec 4.3 for what a "
                               "reader reads, written as a writer writes it (spec 6.5)",
                     "variants": "the variants of its rule (spec 6.5 Variants) an invalid file breaks on its own",
                     "tensors": "sha256 of each tensor's stored bytes",
                     "error": "code and field of the first broken rule of spec 4.6 (compare these two), and the "
                              "reference's message (reader setting max_projection_elements = 2^28)",
                     "coverage": "every rule of spec 4.6 has a vector except those a file cannot reach: "
                                 + ", ".join(UNREACHABLE_FROM_FILES)})
    return env, files


def _saved_bytes(ad: Adapter) -> bytes:
    """The bytes ``save_adapter`` writes for ``ad``."""
    import tempfile
    with tempfile.TemporaryDirectory(prefix="vera-vectors-") as tmp:
        path = os.path.join(tmp, "f.safetensors")
        save_adapter(ad, path)
        return Path(path).read_bytes()


def build_all() -> dict[str, bytes]:
    """Every vector file, path relative to spec/vectors -> bytes."""
    out = {}
    for name, env in (("philox4x32_10.json", philox_vectors()), ("projections.json", projection_vectors()),
                      ("math.json", math_vectors())):
        out[name] = (json.dumps(env, indent=1) + "\n").encode()
    env, files = file_vectors()
    out["files.json"] = (json.dumps(env, indent=1) + "\n").encode()
    for name, data in files.items():
        out[f"files/{name}"] = data
    return out


def check(root: Path | None = None) -> list[str]:
    """Differences between the vectors on disk and freshly generated ones ([] if none)."""
    root = vectors_dir() if root is None else root
    problems = []
    built = build_all()
    for rel, data in built.items():
        p = root / rel
        if not p.exists():
            problems.append(f"{rel}: missing on disk")
        elif p.read_bytes() != data:
            problems.append(f"{rel}: differs from the regenerated vector")
    on_disk = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()
               and not str(p.relative_to(root)).startswith("random123")}
    for rel in sorted(on_disk - set(built)):
        problems.append(f"{rel}: on disk but not generated")
    return problems


def write(root: Path | None = None) -> list[str]:
    """Rewrite the vectors (spec 6.6) in ``root`` (the shipped spec/vectors by default)."""
    root = vectors_dir() if root is None else root
    built = build_all()
    (root / "files").mkdir(parents=True, exist_ok=True)
    for rel, data in built.items():
        container.write_atomic(root / rel, [data])
    for p in (root / "files").iterdir():  # vectors no longer generated
        if f"files/{p.name}" not in built:
            p.unlink()
    return sorted(built)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vera_ref.vectors", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--write", action="store_true", help="rewrite spec/vectors from the reference")
    g.add_argument("--check", action="store_true", help="fail if spec/vectors differs from the reference")
    args = ap.parse_args(argv)
    if args.write:
        for rel in write():
            print(f"wrote spec/vectors/{rel}")
        return 0
    problems = check()
    for p in problems:
        print(p)
    print("vectors: up to date" if not problems else f"vectors: {len(problems)} difference(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
