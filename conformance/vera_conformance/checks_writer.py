"""Checks of what a writer writes (spec 4): the bytes (canonical document, module prefix, omitted
defaults, fingerprint) and every field a file carries, and a written file run in a real model.

Each check hands the implementation's ``save_adapter`` a whole ``LoadedAdapter`` (every field of
spec 4.3: provenance, d_initial, dropout, tensor layout, base model, extra tensors and their
dtypes, module names whose common prefix the writer must find) and reads what it wrote with the
reference. Where spec 4.3 fixes the bytes (canonical form: sorted keys, no insignificant
whitespace, ASCII only; the longest module prefix; ``layout`` omitted when ``linear``; the profile
version), the document is compared with the one vera_ref writes for the same content and the
first broken rule is named; what the spec leaves open (how a number is spelled, whether an
optional field at its default is written) is compared by value and reported as a note.

One refusal no other check reached sits here too: generator arguments out of range (spec 1.3,
1.4: a seed outside [0, 2^64), a group of 2^32), refused rather than reduced.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

import vera_ref
from vera_ref.adapter import base_fingerprint
from vera_ref.dtypes import round_to
from vera_ref.metadata import CONFIG_KEY, FORMAT_KEY, FORMAT_NAME, SPEC_VERSION, VERSION_KEY, common_prefix
from vera_ref.tolerance import compare, constant, forward_magnitude

from .check_base import Check, Mismatch, Outcome, _bits_equal, _crash, _layouts, _philox_generator, _property
from .protocol import LoadedAdapter
from .writer_contents import CASE_KEYS, _content, _contents, _explicit


def _write(impl, content: LoadedAdapter, path: Path) -> None:
    try:
        impl.save_adapter(content, path)
    except Mismatch:
        raise
    except Exception as exc:
        raise Mismatch(f"save_adapter raised {_crash(exc)}") from None


def _read_back(path: Path):
    """The reference's reading of a written file (spec 4.7: writers MUST produce files that pass 4.6)."""
    try:
        return vera_ref.validate_adapter(path)
    except vera_ref.AdapterFileError as exc:
        raise Mismatch(f"the reference rejects the written file (spec 4.7: a writer's files MUST pass 4.6): "
                       f"{exc}") from None


def _written(impl, content: LoadedAdapter):
    """``content`` written by the implementation into a temporary folder, then read by the reference."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "a.safetensors"
        _write(impl, content, path)
        return _read_back(path)


def _reference_bytes(content: LoadedAdapter, folder: Path) -> bytes:
    """What vera_ref writes for the same content."""
    path = folder / "reference.safetensors"
    vera_ref.save_adapter(content.to_adapter(), path)
    return path.read_bytes()


def _header(raw: bytes) -> tuple[dict, bytes]:
    n = int.from_bytes(raw[:8], "little")
    text = raw[8:8 + n]
    return json.loads(text), text


# --- writer_fields: every field a file carries -------------------------------------------------------

def _json_equal(a, b) -> bool:
    """JSON values equal with their types (true is not 1; 1 and 1.0 are one number)."""
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None or isinstance(a, str) or isinstance(b, str):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    return False


def field_diff(ad, want: LoadedAdapter) -> list[str]:
    """Every field of the file (as the reference read it) that is not what the writer was given."""
    cfg, problems = ad.config, []
    got = {"r": cfg.r, "generator": cfg.generator, "seed": cfg.seed, "sharing": cfg.sharing,
           "vector_dtype": cfg.vector_dtype, "tensor_layout": cfg.tensor_layout}
    for k, v in got.items():
        if v != getattr(want, k):
            problems.append(f"{k} {v!r} (given {getattr(want, k)!r})")
    for k, default in (("d_initial", 0.1), ("dropout", 0.0)):  # numbers: read back as the given binary64 value
        v, w = getattr(cfg, k), getattr(want, k)
        if v != w:
            why = (", the default" if v == default else
                   ", the given value rounded to binary32" if v == float(np.float32(w)) else "")
            problems.append(f"{k} {v!r} (given {w!r}{why})")
    mods = [(m.name, m.in_features, m.out_features, m.layout) for m in cfg.modules]
    given = [tuple(m) for m in want.modules]
    if want.sharing == "shared":  # spec 4.3: the order defines per-module groups (and the packed layout only)
        mods, given = sorted(mods), sorted(given)
    if mods != given:
        problems.append(f"modules {mods[:3]} (given {given[:3]}; full name, in, out, layout"
                        f"{' in order: it defines the per-module groups' if want.sharing != 'shared' else ''})")
    else:
        for m, *_ in want.modules:
            for what in ("lambda_d", "lambda_b"):
                if not _bits_equal(getattr(ad, what)[m], getattr(want, what)[m]):
                    problems.append(f"{m}.{what}")
    stored = getattr(want, "stored", {}) or {}
    if sorted(ad.stored) != sorted(stored):
        problems.append(f"stored projections of groups {sorted(ad.stored)} (given {sorted(stored)})")
    else:
        problems += [f"stored {'AB'[k]} of group {g}" for g in sorted(stored) for k in (0, 1)
                     if not _bits_equal(ad.stored[g][k], stored[g][k])]
    if not _json_equal(cfg.provenance, want.provenance):
        problems.append(f"provenance {json.dumps(cfg.provenance)[:80]} (given {json.dumps(want.provenance)[:80]})")
    given_bm = dict(want.base_model or {})
    got_bm = {k: v for k, v in (cfg.base_model or {}).items() if k != "fingerprint" or "fingerprint" in given_bm}
    if want.base_weights is not None:
        given_bm.pop("fingerprint", None)
        got_bm.pop("fingerprint", None)
    if got_bm != given_bm:
        problems.append(f"base_model {cfg.base_model!r} (given {want.base_model!r}; the fingerprint is "
                        "writer_fingerprint's)")
    if sorted(ad.extra) != sorted(want.extra):
        problems.append(f"extra tensors {sorted(ad.extra)} (given {sorted(want.extra)})")
    else:
        for k in sorted(want.extra):
            arr, dt = ad.extra[k]
            if dt != want.extra_dtypes.get(k, "float32"):
                problems.append(f"extra tensor {k} dtype {dt} (given {want.extra_dtypes.get(k, 'float32')})")
            elif not _bits_equal(np.asarray(arr, np.float64), want.extra[k]):
                problems.append(f"extra tensor {k} values")
    return problems


def check_writer_fields(impl, device, dtype, max_examples, case=None) -> Outcome:
    """Every field of spec 4.3-4.5 a file carries, read back by the reference: the old round trip's
    fields and provenance, d_initial, dropout, tensor_layout, base_model, extra tensors and dtypes."""
    def body(spec):
        content = _content(spec)
        problems = field_diff(_written(impl, content), content)
        if problems:
            raise Mismatch(f"written, then read by the reference: {'; '.join(problems[:4])} differ (spec 4.3)")
    lay = _layouts(impl)
    return _property(_contents(lay), body, max(5, max_examples // 4), case, _explicit(lay))


# --- writer_bytes: the bytes spec 4.3 fixes ---------------------------------------------------------

def _whitespace(text: str) -> int | None:
    """The offset of the first JSON whitespace outside strings, or None."""
    in_str = esc = False
    for i, ch in enumerate(text):
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in " \t\n\r":
            return i
    return None


def _unsorted_keys(text: str) -> tuple[str, str] | None:
    """The first pair of keys (a, b) with b right after a in one object and b < a (code points)."""
    found: list = []

    def hook(pairs):
        keys = [k for k, _ in pairs]
        for a, b in zip(keys, keys[1:]):
            if b < a and not found:
                found.append((a, b))
        return dict(pairs)
    json.loads(text, object_pairs_hook=hook)
    return found[0] if found else None


def document_rule(meta: dict, text: str, content: LoadedAdapter) -> str | None:
    """The first rule of spec 4.2/4.3 the written metadata breaks, named, or None."""
    if meta.get(VERSION_KEY) != SPEC_VERSION:
        return (f"vera_spec_version: writes {meta.get(VERSION_KEY)!r}; writers write the file profile "
                f"{SPEC_VERSION!r} (spec 4.2, 4.8)")
    if meta.get(FORMAT_KEY) != FORMAT_NAME:
        return f"vera_format: writes {meta.get(FORMAT_KEY)!r} (spec 4.2)"
    bad = next((i for i, ch in enumerate(text) if ord(ch) > 0x7F), None)
    if bad is not None:
        return (f"canonical form, ASCII only: character {text[bad]!r} (U+{ord(text[bad]):04X}) at offset {bad} "
                "of the document is not \\u-escaped (spec 4.3)")
    ws = _whitespace(text)
    if ws is not None:
        return (f"canonical form, no insignificant whitespace: {text[ws]!r} at offset {ws} of the document "
                f"({text[max(0, ws - 20):ws + 20]!r}) (spec 4.3)")
    pair = _unsorted_keys(text)
    if pair is not None:
        return (f"key order of the document: key {pair[1]!r} after {pair[0]!r}; keys are sorted by code point "
                "(spec 4.3)")
    doc = json.loads(text)
    names = [m[0] for m in content.modules]
    want = common_prefix(names)
    got = doc.get("module_prefix", "")
    if got != want:
        return (f"module_prefix: writes {got!r}, the longest common prefix of whole parts that leaves each "
                f"name non-empty is {want!r} (spec 4.3)")
    for i, m in enumerate(doc.get("modules", [])):
        if isinstance(m, list) and len(m) == 4 and m[3] == "linear":
            return f"default value written: modules[{i}] carries layout 'linear', which writers omit (spec 4.3)"
    return None


def _open_difference(got: str, want: str) -> str:
    i = next((k for k, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    return f"offset {i}: {got[max(0, i - 15):i + 25]!r} where vera_ref writes {want[max(0, i - 15):i + 25]!r}"


def check_writer_bytes(impl, device, dtype, max_examples, case=None) -> Outcome:
    """The document's bytes where spec 4.3 fixes them, against what vera_ref writes for the same
    content: the first broken rule is named. Differences spec 4.3 leaves open are a note."""
    open_notes: list[str] = []

    def body(spec):
        content = _content(spec)
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "a.safetensors"
            _write(impl, content, path)
            _read_back(path)
            header, _ = _header(path.read_bytes())
            ref_header, _ = _header(_reference_bytes(content, Path(d)))
        meta = header.get("__metadata__", {})
        text, ref_text = meta.get(CONFIG_KEY, ""), ref_header["__metadata__"][CONFIG_KEY]
        rule = document_rule(meta, text, content)
        if rule is not None:
            raise Mismatch(f"the written document breaks {rule}")
        if text != ref_text:
            g, w = json.loads(text), json.loads(ref_text)
            for doc in (g, w):  # the fingerprint is writer_fingerprint's; a shared adapter's module order is free
                doc.setdefault("module_prefix", "")
                if isinstance(doc.get("base_model"), dict):
                    doc["base_model"] = {k: v for k, v in doc["base_model"].items() if k != "fingerprint"}
                if doc.get("sharing") == "shared" and isinstance(doc.get("modules"), list):
                    doc["modules"] = sorted(doc["modules"], key=json.dumps)
            if not all(_json_equal(g.get(k, _DEFAULTS.get(k)), w.get(k, _DEFAULTS.get(k))) for k in set(g) | set(w)):
                diff = sorted(k for k in set(g) | set(w) if not _json_equal(g.get(k, _DEFAULTS.get(k)),
                                                                         w.get(k, _DEFAULTS.get(k))))
                raise Mismatch(f"the written document's values of {diff[:4]} differ from what vera_ref writes "
                               f"for the same content")
            if not open_notes:
                open_notes.append("the document differs from vera_ref's only where spec 4.3 leaves it open "
                                  f"(number spelling, escapes, optional fields at their defaults): first at "
                                  f"{_open_difference(text, ref_text)}")
    lay = _layouts(impl)
    out = _property(_contents(lay), body, max(5, max_examples // 4), case, _explicit(lay))
    if out.status == "passed" and open_notes:
        out.note = open_notes[0]
    return out


_DEFAULTS = {"module_prefix": "", "tensor_layout": "per-module", "d_initial": 0.1, "dropout": 0.0,
             "extra_tensors": [], "provenance": {}}  # spec 4.3: the value of an absent optional field


def check_writer_header(impl, device, dtype, max_examples, case=None) -> Outcome:
    """spec 4.7's SHOULDs on the container: tensors in name order, the header padded with spaces to
    a multiple of 8 bytes. A failure here departs from a recommendation, not from a MUST."""
    def body(spec):
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "a.safetensors"
            _write(impl, _content(spec), path)
            _read_back(path)
            raw = path.read_bytes()
        header, text = _header(raw)
        order = sorted((v["data_offsets"], k) for k, v in header.items() if k != "__metadata__")
        names = [k for _, k in order]
        if names != sorted(names):
            first = next(i for i, (a, b) in enumerate(zip(names, sorted(names))) if a != b)
            raise Mismatch(f"tensor data order {names[:4]}: tensor {names[first]!r} is stored where "
                           f"{sorted(names)[first]!r} would be (spec 4.7: writers SHOULD order tensors by name)")
        if len(text) % 8:
            raise Mismatch(f"header of {len(text)} bytes is not padded with spaces to a multiple of 8 "
                           "(spec 4.7: writers SHOULD pad it, as safetensors does)")
        pad = text[len(text.rstrip()):]
        if pad.strip(b" "):
            raise Mismatch(f"the header is padded with {pad!r}, not spaces (spec 4.7)")
    lay = _layouts(impl)
    return _property(_contents(lay), body, max(3, max_examples // 8), case, _explicit(lay)[:2])


# --- writer_fingerprint: spec 4.3's base_model.fingerprint ------------------------------------------

def _fp(weights, mods, raw_layout=False, dtype="<f4", names=True) -> str:
    """spec 4.3's fingerprint, or one of its common wrong variants."""
    h = hashlib.sha256()
    for m in mods:
        W = np.asarray(weights[m.name])
        W = W if (m.layout == "linear" or raw_layout) else W.T  # (out, in)
        if names:
            h.update(m.name.encode("utf-8") + b"\0")
        h.update(np.ascontiguousarray(W, dtype=dtype).tobytes())
    return h.hexdigest()


def _fingerprint_diagnosis(content: LoadedAdapter, got: str) -> str:
    """Name the mistake when the written fingerprint is one of the common wrong ones."""
    mods = [vera_ref.ModuleSpec(*m) for m in content.modules]
    w = content.base_weights
    tries = (("conv1d weights hashed as the layer holds them, (in, out)", lambda: _fp(w, mods, raw_layout=True)),
             ("W0 hashed as binary64", lambda: _fp(w, mods, dtype="<f8")),
             ("no module names", lambda: _fp(w, mods, names=False)),
             ("the modules in name order", lambda: _fp(w, sorted(mods, key=lambda m: m.name))))
    for what, f in tries:
        if f() == got:
            return f" (it is the fingerprint with {what})"
    return ""


def fingerprint_problem(ad, content: LoadedAdapter) -> str | None:
    got = (ad.config.base_model or {}).get("fingerprint")
    given = (content.base_model or {}).get("fingerprint")
    if content.base_weights is not None:
        # spec 4.3: in the file's module order (free for a shared adapter; writer_fields checks it)
        mods = list(ad.config.modules) if sorted(m.name for m in ad.config.modules) == sorted(
            m[0] for m in content.modules) else [vera_ref.ModuleSpec(*m) for m in content.modules]
        want = base_fingerprint(content.base_weights, mods)
        if got is None:
            return ("base_model.fingerprint not written though the base model's weights were given (spec 4.3: "
                    "sha256 of each module's name, a NUL and W0 as binary32 (out, in))")
        if got != want:
            return (f"base_model.fingerprint {got[:16]}... is not spec 4.3's {want[:16]}... of the given base "
                    f"weights{_fingerprint_diagnosis(content, got)}")
    elif given is not None:
        if got is None:
            return (f"base_model.fingerprint dropped: the given one ({given[:16]}..., e.g. of a file read before) is "
                    "not written (spec 4.3)")
        if got != given:
            return f"base_model.fingerprint {got[:16]}... written, the given one is {given[:16]}..."
    elif got is not None:
        return (f"base_model.fingerprint {got[:16]}... written for an unknown base model (no base weights and no "
                "fingerprint given): a fingerprint of weights the writer made up, which the real base model "
                "never matches (spec 4.3)")
    return None


def check_writer_fingerprint(impl, device, dtype, max_examples, case=None) -> Outcome:
    """base_model.fingerprint (spec 4.3): of the given base weights when the base model is known
    (conv1d transposed to (out, in), binary32, names and NUL in module order); the given one kept;
    none made up when the base model is unknown."""
    def body(spec):
        content = _content(spec)
        problem = fingerprint_problem(_written(impl, content), content)
        if problem:
            raise Mismatch(problem)
    lay = _layouts(impl)
    return _property(_contents(lay), body, max(5, max_examples // 4), case, _explicit(lay))


# --- writer_atomic: spec 4.7 ------------------------------------------------------------------------

def check_writer_atomic(impl, device, dtype, max_examples, case=None) -> Outcome:
    """spec 4.7: the target is replaced by a rename (a reader holding the old file keeps reading the
    old bytes), nothing is left beside it, and a write that must fail (a non-finite vector, which
    4.6 refuses) raises, leaves the old file whole and removes its temporary."""
    def body(spec):
        content = _content(spec)
        with tempfile.TemporaryDirectory() as d:
            target = Path(d) / "a.safetensors"
            old = _reference_bytes(dataclasses.replace(content, provenance={"old": True}, base_weights=None,
                                                       base_model=None), Path(d))
            os.replace(Path(d) / "reference.safetensors", target)
            with open(target, "rb") as held:
                _write(impl, content, target)
                if held.read() != old:
                    raise Mismatch("the target was rewritten in place: a reader holding the old file saw its bytes "
                                   "change (spec 4.7: write a temporary, flush it, rename it over the target)")
            left = sorted(p for p in os.listdir(d) if p != target.name)
            if left:
                raise Mismatch(f"a successful write left {left[:3]} beside the target (spec 4.7)")
            _read_back(target)
            new = target.read_bytes()
            bad = dataclasses.replace(content, lambda_b=dict(content.lambda_b))
            first = content.modules[0][0]
            bad.lambda_b[first] = np.where(np.arange(content.modules[0][2]) == 0, np.nan, content.lambda_b[first])
            try:
                impl.save_adapter(bad, target)
            except Exception:
                pass
            else:
                try:
                    vera_ref.validate_adapter(target)
                except vera_ref.AdapterFileError as exc:
                    raise Mismatch(f"a lambda_b holding NaN was written, not refused: the file breaks {exc.code} "
                                   "(spec 4.7: writers MUST produce files that pass 4.6)") from None
                raise Mismatch("a lambda_b holding NaN was accepted without an error") from None
            if target.read_bytes() != new:
                raise Mismatch("a refused write changed the target (spec 4.7: a failed write leaves the old file)")
            left = sorted(p for p in os.listdir(d) if p != target.name)
            if left:
                raise Mismatch(f"a refused write left {left[:3]} behind (spec 4.7: the temporary MUST be removed "
                               "on every error)")
    lay = _layouts(impl)
    return _property(_contents(lay, extras=False), body, max(3, max_examples // 8), case, _explicit(lay)[:2])


# --- written_file_runs: the written file in a real model ----------------------------------------------

def _torch_outputs(path: Path, content: LoadedAdapter, xs: dict, biases: dict) -> dict:
    """Each adapted module's output with the written file loaded by vera_torch onto a model holding the
    content's base weights (impls/torch_file_model.py: the kit's checks import no backend themselves)."""
    from .impls.torch_file_model import module_outputs
    try:
        return module_outputs(path, content, xs, biases)
    except vera_ref.VeraError as exc:  # vera_torch refuses the file (AdapterFileError, ModelMismatchError)
        raise Mismatch(f"vera_torch refuses the written file on the base model it was written for: "
                       f"{_crash(exc)}") from None


def check_written_file_runs(impl, device, dtype, max_examples, case=None) -> Outcome:
    """The written file loaded onto a real model (vera_torch, base fingerprint checked; the reference
    reader when torch is absent) and run: each module's output against the float64 forward of the
    vectors the writer was given, within spec 5.2's float32 bound."""
    import importlib.util
    use_torch = all(importlib.util.find_spec(m) is not None for m in ("torch", "vera_torch"))
    worst = {"r": 0.0}

    def body(spec):
        content = _content(spec, float32_values=True)
        ref = content.to_adapter()
        rng = np.random.default_rng(spec["values_seed"] + 1)
        xs = {n: round_to(rng.normal(size=(3, i)), "float32").astype(np.float64) for n, i, _, _ in content.modules}
        biases = {n: round_to(rng.normal(size=o), "float32").astype(np.float64) for n, _, o, _ in content.modules}
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "a.safetensors"
            _write(impl, content, path)
            if use_torch:
                outs = _torch_outputs(path, content, xs, biases)
            else:
                loaded = _read_back(path)
                outs = {n: vera_ref.forward(xs[n], content.base_weights[n], biases[n], *loaded.module_projection(n),
                                            loaded.lambda_d[n], loaded.lambda_b[n], layout=lay, dtype="float32")
                        for n, _, _, lay in content.modules}
        for n, fi, fo, lay in content.modules:
            args = (xs[n], content.base_weights[n], biases[n], *ref.module_projection(n), content.lambda_d[n],
                    content.lambda_b[n])
            want = vera_ref.forward(*args, layout=lay)
            S = forward_magnitude(*args, layout=lay)
            c = constant("forward", "float32", N=3, in_features=fi, out_features=fo, r=content.r)
            got = np.asarray(outs[n], np.float64)
            if got.shape != want.shape:
                raise Mismatch(f"{n}: output shape {got.shape}, expected {want.shape}")
            chk = compare(got, want, S, "float32", c)
            if not chk.ok:
                raise Mismatch(f"{n} run with the written file: {chk.describe()} against the forward of the vectors "
                               f"the writer was given", chk.ratio)
            worst["r"] = max(worst["r"], chk.ratio)
        return worst["r"]
    lay = _layouts(impl)
    first, second = _explicit(lay, base="known")[:2]
    conv = second["modules"][1][3]
    second = {**second, "extra": [], "modules": [["h.1.c_attn", 5, 2, lay[0]], ["h.0.c_attn", 4, 6, conv],
                                                 ["h.0.mlp.fc_1", 2, 2, lay[0]]]}  # not nested (a real model's)
    out = _property(_contents(lay, base="known", extras=False), body, max(3, max_examples // 8), case,
                    [first, second])
    out.note = "" if use_torch else "torch is absent: the written file was run through the reference's reader"
    return out


# --- refusals no other check reaches (spec 0.3: reject, never guess) --------------------------------

_BAD_ARGUMENTS = ((2**64, 0, "seed 2^64 (spec 1.3: a seed is in [0, 2^64))", 0),
                  (-1, 0, "seed -1 (spec 1.3)", 2**64 - 1),
                  (5, 2**32, "group 2^32 (spec 1.4: g is below 2^32)", None))


def check_refuses_bad_arguments(impl, device, dtype, max_examples, case=None) -> Outcome:
    """spec 1.3, 1.4, 0.3: a seed outside [0, 2^64) and a group of 2^32 are rejected, not reduced
    (a seed taken mod 2^64, a group mod 2^32, gives another adapter's projection); the edges inside
    (seed 2^64 - 1, group 2^32 - 1) are accepted and give spec 1's bits."""
    tried = 0
    for seed, group in ((2**64 - 1, 0), (0, 2**32 - 1)):  # the edges inside the ranges are accepted, bit-exact
        tried += 1
        try:
            A, B = impl.projection(seed, 2, 3, 4, group, device)
        except Exception as exc:
            return Outcome("failed", f"projection refused seed {seed}, group {group}, inside the ranges of spec 1.3, "
                                     f"1.4: {_crash(exc)}", tried, case={"seed": str(seed), "group": str(group)})
        want = vera_ref.projection(seed, 2, 3, 4, group)
        if not (_bits_equal(np.asarray(A, np.float64), want[0]) and _bits_equal(np.asarray(B, np.float64), want[1])):
            return Outcome("failed", f"projection of seed {seed}, group {group} differs from spec 1's", tried,
                           case={"seed": str(seed), "group": str(group)})
    for seed, group, what, alias in _BAD_ARGUMENTS:
        tried += 1
        try:
            A, B = impl.projection(seed, 2, 3, 4, group, device)
        except Exception:
            continue
        note = ""
        want = vera_ref.projection(alias if alias is not None else seed, 2, 3, 4, 0 if alias is None else group)
        if _bits_equal(np.asarray(A, np.float64), want[0]) and _bits_equal(np.asarray(B, np.float64), want[1]):
            note = (f": it gives the projection of {'group 0' if alias is None else f'seed {alias}'}, "
                    "the argument reduced instead of refused")
        return Outcome("failed", f"projection accepted {what}{note}; it MUST be rejected", tried,
                       case={"seed": str(seed), "group": str(group)})
    return Outcome("passed", "", tried)


CHECKS: list = [
    Check("writer_fields", "files", "F", False, check_writer_fields,
          "every field a written file carries (provenance, d_initial, dropout, layout, base model, extras)",
          case_keys=CASE_KEYS),
    Check("writer_bytes", "files", "F", False, check_writer_bytes,
          "the document's bytes where spec 4.3 fixes them (canonical, prefix, omitted defaults, version)",
          case_keys=CASE_KEYS),
    Check("writer_header", "files", "F", False, check_writer_header,
          "tensors in name order, header padded to 8 bytes (the SHOULDs of 4.7)", case_keys=CASE_KEYS),
    Check("writer_fingerprint", "files", "F", False, check_writer_fingerprint,
          "base_model.fingerprint of the given weights, none made up (4.3)", case_keys=CASE_KEYS),
    Check("writer_atomic", "files", "F", False, check_writer_atomic,
          "replaced by rename, nothing left behind, a refused write leaves the old file (4.7)", case_keys=CASE_KEYS),
    Check("written_file_runs", "files", "F", False, check_written_file_runs,
          "a written file loaded onto a real model and run (5.2 bounds)", case_keys=CASE_KEYS),
    Check("refuses_bad_arguments", "generator", "G", False, check_refuses_bad_arguments,
          "a seed outside [0, 2^64) and a group of 2^32 rejected (1.3, 1.4)", needs=_philox_generator, case_keys=()),
]
