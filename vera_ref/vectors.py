"""Regenerate and check the language-neutral test vectors of spec 6.

    python -m vera_ref.vectors --write     # rewrite spec/vectors/ from the reference
    python -m vera_ref.vectors --check     # regenerate in memory, fail on any difference
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, container
from .adapter import Adapter, new_adapter, save_adapter, _tensor_plan, base_fingerprint
from .errors import AdapterFileError
from .layer import backward, forward, merge
from .metadata import CONFIG_KEY, FORMAT_KEY, FORMAT_NAME, SPEC_VERSION, VERSION_KEY, config_document, ModuleSpec
from .peft_mt19937 import peft_projection
from .projection import kaiming_bound, projection, table_words
from .tolerance import backward_magnitude, forward_magnitude, merge_magnitude
from .adapter import load_adapter, sha256_hex

SPEC_DIR = Path(__file__).resolve().parent.parent / "spec"
VECTORS_DIR = SPEC_DIR / "vectors"
RANDOM123_SOURCE = ("DEShawResearch/random123 v1.14.0 (commit 9545ff6413f258be2f04c1d319d99aaef7521150), "
                    "files tests/kat_vectors and tests/old_kat_vectors, lines 'philox4x32 10 ...' verbatim")


def _envelope(name: str, source: str, groups: list[dict], notes: dict[str, str]) -> dict[str, Any]:
    n = 0
    for g in groups:
        for t in g["tests"]:
            n += 1
            t["tcId"] = n
    return {"schema": "vera-vectors-v1", "name": name, "source": source,
            "generatorVersion": f"vera-ref {__version__}", "specVersion": SPEC_VERSION,
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

def philox_vectors(random123_dir: Path = VECTORS_DIR / "random123") -> dict[str, Any]:
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
                     {"check": "spec 5.2 with the case's dtype: |got - expected| <= 16 * eps * magnitude + tiny",
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
    return out


def _payload(ad: Adapter, doc_edit=None, meta_edit=None, tensor_edit=None) -> bytes:
    """A file built from ``ad`` with optional edits, bypassing the writer's own checks."""
    ad.config.extra_tensors = sorted(ad.extra)
    ad.config.projection_sha256 = ad.checksums()
    doc = config_document(ad.config)
    if doc_edit:
        doc_edit(doc)
    meta = {FORMAT_KEY: FORMAT_NAME, VERSION_KEY: SPEC_VERSION,
            CONFIG_KEY: json.dumps(doc, sort_keys=True, separators=(",", ":"))}
    if meta_edit:
        meta_edit(meta)
    plan = _tensor_plan(ad)
    if tensor_edit:
        tensor_edit(plan)
    return container.to_bytes(meta, plan)


def _set(key, value):
    return lambda d: d.__setitem__(key, value)


def _raw_header(header: dict, data: bytes = b"", length: int | None = None) -> bytes:
    text = json.dumps(header, separators=(",", ":")).encode()
    return (len(text) if length is None else length).to_bytes(8, "little") + text + data


def _invalid_files() -> list[tuple[str, bytes]]:
    base = lambda: new_adapter([("q", 8, 8), ("v", 8, 4)], r=4, seed=1)  # noqa: E731
    packed = lambda: new_adapter([("q", 8, 8), ("v", 8, 4)], r=4, seed=1, tensor_layout="packed")  # noqa: E731
    ok = _payload(base())
    meta_ok = {FORMAT_KEY: FORMAT_NAME, VERSION_KEY: SPEC_VERSION}
    cases: list[tuple[str, bytes]] = [
        ("file shorter than the length prefix", b"\x10\x00\x00"),
        ("header length of 2^40 bytes", (1 << 40).to_bytes(8, "little") + b"{}"),
        ("header length past the end of the file", (4096).to_bytes(8, "little") + b'{"__metadata__":{}}'),
        ("header is not JSON", (5).to_bytes(8, "little") + b"{nope"),
        ("no __metadata__", _raw_header({})),
        ("tensor dtype I8", _raw_header({"__metadata__": meta_ok, "q.lambda_d": {
            "dtype": "I8", "shape": [4], "data_offsets": [0, 4]}}, b"\0" * 4)),
        ("data_offsets disagree with the shape", _raw_header({"__metadata__": meta_ok, "q.lambda_d": {
            "dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, b"\0" * 8)),
        ("tensor data runs past the end of the file", _raw_header({"__metadata__": meta_ok, "q.lambda_d": {
            "dtype": "F32", "shape": [1000000], "data_offsets": [0, 4000000]}}, b"\0" * 16)),
        ("gap between tensors", _raw_header({"__metadata__": meta_ok,
            "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
            "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}, b"\0" * 12)),
        ("bad magic (a plain PyTorch safetensors file)", _payload(base(), meta_edit=_set(FORMAT_KEY, "pt"))),
        ("spec version 2.0", _payload(base(), meta_edit=_set(VERSION_KEY, "2.0"))),
        ("vera_config is not JSON", _payload(base(), meta_edit=_set(CONFIG_KEY, "{r: 4"))),
        ("unknown field in the document", _payload(base(), doc_edit=_set("alpha", 8))),
        ("r = 0", _payload(base(), doc_edit=_set("r", 0))),
        ("unknown generator", _payload(base(), doc_edit=_set("generator", "xorshift128"))),
        ("seed 2^64, out of range", _payload(base(), doc_edit=_set("seed", "18446744073709551616"))),
        ("seed as a JSON number", _payload(base(), doc_edit=_set("seed", 1))),
        ("seed with the stored generator", _payload(base(), doc_edit=_set("generator", "stored"))),
        ("peft-mt19937 with per-module sharing", _payload(base(), doc_edit=lambda d: d.update(
            generator="peft-mt19937", sharing="per-module"))),
        ("duplicate module", _payload(base(), doc_edit=lambda d: d["modules"].append(list(d["modules"][0])))),
        ("bad layout", _payload(base(), doc_edit=lambda d: d["modules"][0].append("conv2d"))),
        ("module entry as an object", _payload(base(), doc_edit=lambda d: d["modules"].__setitem__(
            0, {"name": "q", "in_features": 8, "out_features": 8}))),
        ("module_prefix not ending in '.'", _payload(base(), doc_edit=_set("module_prefix", "model"))),
        ("unknown tensor_layout", _payload(base(), doc_edit=_set("tensor_layout", "interleaved"))),
        ("n_in disagrees with the modules", _payload(base(), doc_edit=_set("n_in", 16))),
        ("dropout = 1", _payload(base(), doc_edit=_set("dropout", 1.0))),
        ("checksum list for the wrong groups", _payload(base(), doc_edit=lambda d: d["projection_sha256"][0]
                                                       .update(group=1))),
        ("hostile document: a projection of 10^12 elements", _payload(base(), doc_edit=lambda d: d.update(
            r=1000000, n_in=500000, n_out=500000, modules=[["q", 500000, 500000], ["v", 8, 4]]))),
        ("missing lambda_b", _payload(base(), tensor_edit=lambda p: p.pop("v.lambda_b"))),
        ("unexpected tensor", _payload(base(), tensor_edit=_set("vera_A", (np.zeros((4, 8), np.float32), "F32")))),
        ("lambda_d of the wrong length", _payload(base(), tensor_edit=_set(
            "q.lambda_d", (np.zeros(5, np.float32), "F32")))),
        ("lambda dtype differs from vector_dtype", _payload(base(), tensor_edit=_set(
            "q.lambda_b", (np.zeros(8, np.float16), "F16")))),
        ("packed lambda_b of the wrong length", _payload(packed(), tensor_edit=_set(
            "lambda_b", (np.zeros(11, np.float32), "F32")))),
        ("NaN in lambda_b", _payload(base(), tensor_edit=_set(
            "v.lambda_b", (np.array([0, np.nan, 0, 0], np.float32), "F32")))),
        ("checksum of A does not match the generator", _payload(base(), doc_edit=lambda d: d["projection_sha256"][0]
                                                               .update(A="0" * 64))),
    ]
    assert ok  # the base is valid: checked by the caller through the valid group
    return cases


def file_vectors() -> tuple[dict[str, Any], dict[str, bytes]]:
    files: dict[str, bytes] = {}
    valid, invalid = [], []
    import tempfile, os
    with tempfile.TemporaryDirectory() as tmp:
        for comment, ad in _valid_adapters():
            path = os.path.join(tmp, "f.safetensors")
            save_adapter(ad, path)
            data = Path(path).read_bytes()
            name = f"valid-{len(valid) + 1:02d}.safetensors"
            files[name] = data
            meta, entries = container.read_metadata(path)
            tensors = {k: {"dtype": v[0], "shape": list(v[1]),
                           "sha256": hashlib.sha256(data[8 + int.from_bytes(data[:8], 'little') + v[2]:
                                                         8 + int.from_bytes(data[:8], 'little') + v[3]]).hexdigest()}
                       for k, v in sorted(entries.items())}
            valid.append({"comment": comment, "result": "valid", "file": name,
                          "config": json.loads(meta[CONFIG_KEY]), "tensors": tensors})
        for comment, data in _invalid_files():
            name = f"invalid-{len(invalid) + 1:02d}.safetensors"
            files[name] = data
            path = os.path.join(tmp, name)
            Path(path).write_bytes(data)
            try:
                load_adapter(path)
            except AdapterFileError as exc:
                err = {"field": exc.field, "message": str(exc)}
            else:
                raise RuntimeError(f"invalid file vector {name!r} ({comment}) was accepted")
            invalid.append({"comment": comment, "result": "invalid", "file": name, "error": err})
    env = _envelope("files", "vera_ref.vectors (this repository)",
                    [{"type": "AdapterFileValid", "tests": valid}, {"type": "AdapterFileInvalid", "tests": invalid}],
                    {"files": "spec/vectors/files/<file>", "tensors": "sha256 of each tensor's stored bytes",
                     "error": "field and exact message of spec 4.6 (reader setting max_projection_elements = 2^28)"})
    return env, files


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


def check(root: Path = VECTORS_DIR) -> list[str]:
    """Differences between the vectors on disk and freshly generated ones ([] if none)."""
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


def write(root: Path = VECTORS_DIR) -> list[str]:
    built = build_all()
    (root / "files").mkdir(parents=True, exist_ok=True)
    for rel, data in built.items():
        container.write_atomic(root / rel, [data])
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
