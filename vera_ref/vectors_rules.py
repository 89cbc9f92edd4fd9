"""File vectors of spec 6.5 added in spec 1.2: a vector per rule per variant, the orders 4.6 fixes.

``variant_files`` breaks each rule of the variant table of spec 6.5 on its own (one fault per file)
in every variant it applies to (each tensor kind, each generator, each dtype); ``order_files`` holds
the multi-fault files whose verdict depends on an order spec 4.6 fixes (steps 6, 11, 16, 17, 20.4,
21, 23-25), and ``finding_files`` the cases spec 1.2 decided (integers, null, versions, fields a
minor version cannot add). Each entry is ``(code, comment, bytes, variants)``. The helpers that
build a file byte for byte, bypassing the writer's checks, live here too (``vera_ref.vectors``
uses them).
"""
from __future__ import annotations

import json

import numpy as np

from . import container
from .adapter import Adapter, new_adapter, tensor_plan
from .metadata import CONFIG_KEY, FORMAT_KEY, FORMAT_NAME, SPEC_VERSION, VERSION_KEY, config_document

Vector = tuple[str, str, bytes, tuple[str, ...]]


def _raw(text: bytes, data: bytes = b"", length: int | None = None) -> bytes:
    """A container from a header text given byte for byte."""
    return (len(text) if length is None else length).to_bytes(8, "little") + text + data


def _raw_header(header: dict, data: bytes = b"", length: int | None = None) -> bytes:
    return _raw(json.dumps(header, separators=(",", ":")).encode(), data, length)


def _doc_bytes(ad: Adapter, doc_text=None, doc_edit=None, meta_edit=None, tensor_edit=None,
               version: str = SPEC_VERSION) -> bytes:
    """A file built from ``ad`` with edits, bypassing the writer's own checks.

    doc_edit(doc) edits the document (a dict); doc_text(text) -> text edits its JSON text.
    """
    ad.config.extra_tensors = sorted(ad.extra)
    ad.config.projection_sha256 = ad.checksums()
    doc = config_document(ad.config)
    if doc_edit:
        doc_edit(doc)
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    if doc_text:
        text = doc_text(text)
    meta = {FORMAT_KEY: FORMAT_NAME, VERSION_KEY: version, CONFIG_KEY: text}
    if meta_edit:
        meta_edit(meta)
    plan = tensor_plan(ad)
    if tensor_edit:
        tensor_edit(plan)
    return container.to_bytes(meta, plan)


def _set(key, value):
    return lambda d: d.__setitem__(key, value)


def _drop(*keys):
    def edit(d):
        for k in keys:
            d.pop(k, None)
    return edit


def _edit_header(data: bytes, edit) -> bytes:
    """``data`` with its header text replaced by ``edit(text)`` (re-padded, new length prefix)."""
    n = int.from_bytes(data[:8], "little")
    text = edit(data[8:8 + n].decode("utf-8").rstrip(" ")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + n:]


# --- the adapters the vectors start from -------------------------------------------------------

MODS = [("q", 8, 8), ("v", 8, 4)]


def _base(**kw) -> Adapter:
    kw.setdefault("seed", 1)
    return new_adapter(MODS, r=4, **kw)


def _vq() -> Adapter:
    """Module order v, q: the order of spec 4.4 (v's lambda_d, v's lambda_b, q's ...) is neither
    name order nor 'every lambda_d, then every lambda_b'."""
    return new_adapter([("v", 8, 4), ("q", 8, 8)], r=4, seed=1)


def _stored(sharing: str = "shared", *, extra: bool = False) -> Adapter:
    rng = np.random.default_rng(5)
    draw = lambda *s: rng.normal(size=s).astype(np.float32)  # noqa: E731
    pairs = {0: (draw(4, 8), draw(8, 4))} if sharing == "shared" else {1: (draw(4, 8), draw(8, 4)),
                                                                        2: (draw(4, 8), draw(4, 4))}
    ad = new_adapter(MODS, r=4, generator="stored", sharing=sharing, stored=pairs)
    if extra:
        ad.extra["A0.w"] = (np.ones((2, 2), np.float32), "float32")  # A0.w sorts before B
    return ad


def _with(value: float, array: np.ndarray, at: int = 0) -> np.ndarray:
    """``array`` (a copy) with ``value`` at flat index ``at``."""
    out = np.array(array, copy=True)
    out.reshape(-1)[at] = value
    return out


def _put(name: str, array, code: str):
    return lambda p: p.__setitem__(name, (np.asarray(array), code))


def _checksum(group_index: int, key: str, value: str = "0" * 64):
    return lambda d: d["projection_sha256"][group_index].update({key: value})


HUGE = dict(r=1000000, n_in=500000, n_out=500000)


def _huge(d: dict) -> None:
    d.update(HUGE, modules=[["q", 500000, 500000], ["v", 8, 4]])


# --- a vector per rule per variant (spec 6.5 "Variants") -----------------------------------------

def variant_files() -> list[Vector]:
    """Each rule of the variant table of spec 6.5 broken on its own in each variant it applies to."""
    nan, inf = float("nan"), float("inf")
    out: list[Vector] = []

    def add(code, comment, data, *variants):
        out.append((code, comment, data, tuple(variants)))

    def header(entries: dict, data: bytes) -> bytes:
        meta = {FORMAT_KEY: FORMAT_NAME, VERSION_KEY: SPEC_VERSION}
        return _raw_header({"__metadata__": meta, **entries}, data)

    # step 6: the size rules for each dtype's itemsize
    add("E4.6.6.6", "an F16 tensor of 3 elements over a 4-byte data section",
        header({"x": {"dtype": "F16", "shape": [3], "data_offsets": [0, 6]}}, b"\0" * 4), "F16")
    add("E4.6.6.6", "a BF16 tensor of 3 elements over a 4-byte data section",
        header({"x": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]}}, b"\0" * 4), "BF16")
    for code, n in (("F64", 8), ("F16", 2), ("BF16", 2)):
        add("E4.6.6.7", f"an {code} tensor of one element with data_offsets [0, 4] ({n} bytes needed)",
            header({"x": {"dtype": code, "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 8), code)
    # step 8: each mark of a PEFT adapter alone
    add("E4.6.8.1", "a PEFT adapter named by its prefix alone (base_model.model.)",
        _raw_header({"__metadata__": {"format": "pt"}, "base_model.model.q.weight": {
            "dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8), "base_model.model. prefix")
    add("E4.6.8.1", "a PEFT adapter named by vera_lambda_ alone",
        _raw_header({"__metadata__": {"format": "pt"}, "q.vera_lambda_b": {
            "dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8), "vera_lambda_ inside")
    # steps 14, 21, 22: each generator and sharing
    peft = lambda **kw: _doc_bytes(_base(generator="peft-mt19937"), **kw)  # noqa: E731
    add("E4.6.14.2", "peft-mt19937 without a seed", peft(doc_edit=_drop("seed")), "peft-mt19937")
    add("E4.6.14.3", "peft-mt19937 with a seed of a leading zero", peft(doc_edit=_set("seed", "01")), "peft-mt19937")
    add("E4.6.21.2", "per-module checksums listed for groups [2, 1]",
        _doc_bytes(_base(sharing="per-module"), doc_edit=lambda d: d["projection_sha256"].reverse()), "per-module")
    add("E4.6.21.3", "B of group 0 not hex", _doc_bytes(_base(), doc_edit=_checksum(0, "B", "zz")), "B")
    add("E4.6.21.3", "A of group 2 (per-module) in uppercase hex",
        _doc_bytes(_base(sharing="per-module"), doc_edit=lambda d: d["projection_sha256"][1].update(
            A=d["projection_sha256"][1]["A"].upper())), "A.g")
    add("E4.6.21.3", "B of group 1 (per-module) of 63 digits",
        _doc_bytes(_base(sharing="per-module"), doc_edit=lambda d: d["projection_sha256"][0].update(
            B=d["projection_sha256"][0]["B"][:63])), "B.g")
    add("E4.6.22.1", "per-module philox4x32-10 projections of 10^12 elements in all",
        _doc_bytes(_base(sharing="per-module"), doc_edit=_huge), "philox4x32-10 per-module")
    add("E4.6.22.1", "a peft-mt19937 projection of 10^12 elements", peft(doc_edit=_huge), "peft-mt19937")
    add("E4.6.22.1", "stored projections declared at 10^12 elements (the limit is checked before the tensors)",
        _doc_bytes(_stored(), doc_edit=_huge), "stored shared")
    add("E4.6.22.1", "per-module stored projections declared at 10^12 elements",
        _doc_bytes(_stored("per-module"), doc_edit=_huge), "stored per-module")
    # step 23: each kind of tensor
    for name, ad, kind in (("v.lambda_b", _base, "lambda_b"), ("lambda_d", lambda: _base(tensor_layout="packed"),
                           "packed lambda_d"), ("lambda_b", lambda: _base(tensor_layout="packed"), "packed lambda_b"),
                           ("A", _stored, "A"), ("B", _stored, "B"), ("A.2", lambda: _stored("per-module"), "A.g"),
                           ("B.1", lambda: _stored("per-module"), "B.g")):
        add("E4.6.23.1", f"extra_tensors lists {name}, a VeRA tensor of the file",
            _doc_bytes(ad(), doc_edit=_set("extra_tensors", [name])), kind)
    for name, ad, kind in (("q.lambda_d", _base, "lambda_d"), ("lambda_d", lambda: _base(tensor_layout="packed"),
                           "packed lambda_d"), ("lambda_b", lambda: _base(tensor_layout="packed"), "packed lambda_b"),
                           ("A", _stored, "A"), ("B", _stored, "B"), ("A.2", lambda: _stored("per-module"), "A.g"),
                           ("B.1", lambda: _stored("per-module"), "B.g"), ("A0.w", lambda: _stored(extra=True),
                                                                           "extra")):
        add("E4.6.23.2", f"{name} missing", _doc_bytes(ad(), tensor_edit=lambda p, n=name: p.pop(n)), kind)
    add("E4.6.23.3", "lambda_d (a packed name) in a per-module file",
        _doc_bytes(_base(), tensor_edit=_put("lambda_d", np.zeros((2, 4), np.float32), "F32")),
        "packed name, per-module layout")
    add("E4.6.23.3", "q.lambda_d (a per-module name) in a packed file",
        _doc_bytes(_base(tensor_layout="packed"), tensor_edit=_put("q.lambda_d", np.zeros(4, np.float32), "F32")),
        "module vector name, packed layout")
    add("E4.6.23.3", "A (a stored projection) in a philox4x32-10 file",
        _doc_bytes(_base(), tensor_edit=_put("A", np.zeros((4, 8), np.float32), "F32")),
        "projection name, generated projections")
    add("E4.6.23.3", "A.1 (a per-module projection) in a shared stored file",
        _doc_bytes(_stored(), tensor_edit=_put("A.1", np.zeros((4, 8), np.float32), "F32")),
        "per-module projection name, shared")
    # step 24: each kind of tensor, each vector dtype
    add("E4.6.24.1", "v.lambda_b of 5 values (out_features 4)",
        _doc_bytes(_base(), tensor_edit=_put("v.lambda_b", np.zeros(5, np.float32), "F32")), "lambda_b")
    add("E4.6.24.1", "packed lambda_d of shape (2, 3) (r = 4)", _doc_bytes(
        _base(tensor_layout="packed"), tensor_edit=_put("lambda_d", np.zeros((2, 3), np.float32), "F32")),
        "packed lambda_d")
    for name, g, cut, kind in (("A", 0, (slice(None), slice(0, 7)), "A"), ("B", 0, (slice(None), slice(0, 3)), "B"),
                               ("A.2", 2, (slice(0, 3), slice(None)), "A.g"), ("B.1", 1, (slice(0, 7), slice(None)),
                                                                               "B.g")):
        ad = _stored("shared" if g == 0 else "per-module")
        A, B = ad.stored[g]
        ad.stored[g] = (A[cut], B) if name[0] == "A" else (A, B[cut])  # the checksum is of what is stored
        add("E4.6.24.1", f"stored {name} of shape {list(ad.stored[g][name[0] == 'B'].shape)}", _doc_bytes(ad), kind)
    add("E4.6.24.2", "q.lambda_d stored as F32 in a float16 file", _doc_bytes(
        _base(vector_dtype="float16"), tensor_edit=_put("q.lambda_d", np.zeros(4, np.float32), "F32")),
        "lambda_d", "float16")
    add("E4.6.24.2", "packed lambda_d stored as F16 in a bfloat16 file", _doc_bytes(
        _base(vector_dtype="bfloat16", tensor_layout="packed"),
        tensor_edit=_put("lambda_d", np.zeros((2, 4), np.float16), "F16")), "packed lambda_d", "bfloat16")
    add("E4.6.24.2", "packed lambda_b stored as F32 in a float64 file", _doc_bytes(
        _base(vector_dtype="float64", tensor_layout="packed"),
        tensor_edit=_put("lambda_b", np.zeros(12, np.float32), "F32")), "packed lambda_b", "float64")
    for name, sharing, code, kind in (("B", "shared", "F16", "B"), ("A.2", "per-module", "BF16", "A.g"),
                                      ("B.1", "per-module", "F64", "B.g")):
        add("E4.6.24.3", f"stored {name} as {code}", _doc_bytes(_stored(sharing), tensor_edit=lambda p, n=name, c=code:
                                                                 p.__setitem__(n, (p[n][0], c))), kind)
    # step 25: each kind of tensor, each dtype, NaN and both infinities
    add("E4.6.25.1", "-infinity in v.lambda_b (F16)", _doc_bytes(_base(vector_dtype="float16"), tensor_edit=_put(
        "v.lambda_b", np.array([0, 0, -inf, 0], np.float16), "F16")), "lambda_b", "F16", "-inf")
    add("E4.6.25.1", "NaN in packed lambda_d (F64)", _doc_bytes(
        _base(vector_dtype="float64", tensor_layout="packed"),
        tensor_edit=_put("lambda_d", _with(nan, np.zeros((2, 4)), 5), "F64")), "packed lambda_d", "F64", "NaN")
    add("E4.6.25.1", "infinity in packed lambda_b (F32)", _doc_bytes(_base(tensor_layout="packed"), tensor_edit=_put(
        "lambda_b", _with(inf, np.zeros(12, np.float32), 11), "F32")), "packed lambda_b", "F32", "+inf")
    for name, g, value, kind in (("A", 0, nan, "A"), ("B", 0, inf, "B"), ("A.2", 2, -inf, "A.g"),
                                 ("B.1", 1, nan, "B.g")):
        ad = _stored("shared" if g == 0 else "per-module")
        A, B = ad.stored[g]
        ad.stored[g] = (_with(value, A, 3), B) if name[0] == "A" else (A, _with(value, B, 3))
        label = {"nan": "NaN", "inf": "+inf", "-inf": "-inf"}[str(value)]
        add("E4.6.25.1", f"{label} in stored {name} (its checksum is of the stored values)", _doc_bytes(ad), kind,
            "F32", label)
    ad = _base()
    ad.extra["head.w"] = (np.array([0.5, nan]), "float64")
    add("E4.6.25.1", "NaN in an extra tensor (F64)", _doc_bytes(ad), "extra", "F64", "NaN")
    ad = _base()
    ad.extra["head.b"] = (np.array([-inf, 1.0], np.float32), "bfloat16")
    add("E4.6.25.1", "-infinity in an extra tensor (BF16)", _doc_bytes(ad), "extra", "BF16", "-inf")
    # step 26: each checksum of each generator
    add("E4.6.26.1", "checksum of B does not match the philox4x32-10 generator",
        _doc_bytes(_base(), doc_edit=_checksum(0, "B")), "philox4x32-10", "B")
    add("E4.6.26.1", "checksum of A of group 2 does not match (per-module philox4x32-10)",
        _doc_bytes(_base(sharing="per-module"), doc_edit=_checksum(1, "A")), "philox4x32-10", "A.g")
    add("E4.6.26.1", "checksum of B of group 1 does not match (per-module philox4x32-10)",
        _doc_bytes(_base(sharing="per-module"), doc_edit=_checksum(0, "B")), "philox4x32-10", "B.g")
    add("E4.6.26.1", "checksum of A does not match the peft-mt19937 generator",
        peft(doc_edit=_checksum(0, "A")), "peft-mt19937", "A")
    add("E4.6.26.1", "checksum of B does not match the peft-mt19937 generator",
        peft(doc_edit=_checksum(0, "B")), "peft-mt19937", "B")
    for idx, key, sharing, kind in ((0, "A", "shared", "A"), (0, "B", "shared", "B"), (1, "A", "per-module", "A.g"),
                                    (0, "B", "per-module", "B.g")):
        add("E4.6.26.1", f"checksum of stored {key} of group {idx if sharing == 'shared' else idx + 1} does not "
                         "match the stored values", _doc_bytes(_stored(sharing), doc_edit=_checksum(idx, key)),
            "stored", kind)
    return out


# --- the orders spec 4.6 fixes (multi-fault files) ---------------------------------------------

def _module_edit(i: int, j: int, value):
    return lambda d: d["modules"][i].__setitem__(j, value)


def _both(*edits):
    def edit(d):
        for e in edits:
            e(d)
    return edit


def _zz_first(text: str) -> str:
    """The header text with the entry zz.w moved to the front (its offsets unchanged)."""
    header = json.loads(text)
    return json.dumps({"zz.w": header.pop("zz.w"), **header}, separators=(",", ":"))


def order_files() -> list[Vector]:
    """Files with two faults whose verdict is fixed by an order of spec 4.6 (a reader with another
    order names the other fault); ``tests/core/test_vectors_orders.py`` checks that each order has one."""
    nan = float("nan")
    P = lambda **kw: _doc_bytes(_base(), **kw)  # noqa: E731
    V = lambda **kw: _doc_bytes(_vq(), **kw)  # noqa: E731
    meta = {FORMAT_KEY: FORMAT_NAME, VERSION_KEY: SPEC_VERSION}
    f32 = lambda shape, off: {"dtype": "F32", "shape": shape, "data_offsets": off}  # noqa: E731
    out = [
        ("E4.6.6.5", "order (step 6, an entry's rules before the next entry's): 'a' has one data offset, 'b' "
                     "the dtype I8", _raw_header({"__metadata__": meta, "a": f32([1], [4]), "b": {
                         "dtype": "I8", "shape": [1], "data_offsets": [4, 5]}}, b"\0" * 5)),
        ("E4.6.11.1", "order (step 11, code points): unknown fields U+1F600 (first in the text and in UTF-16 "
                      "order) and U+FF61 (first by code point)",
         P(doc_text=lambda t: '{"\\ud83d\\ude00":1,"\\uff61":2,' + t[1:])),
        ("E4.6.16.1", "order (step 16, module_prefix first): module_prefix without its '.' and modules missing",
         P(doc_edit=_both(_set("module_prefix", "model"), _drop("modules")))),
        ("E4.6.16.7", "order (step 16, entry by entry): modules[0] has in_features 0, modules[1] a bad name",
         P(doc_edit=_both(_module_edit(0, 1, 0), _module_edit(1, 0, "a..b")))),
        ("E4.6.16.5", "order (step 16, an entry's rules in code order): modules[0] has in_features 0 and a bad name",
         P(doc_edit=_both(_module_edit(0, 1, 0), _module_edit(0, 0, "a..b")))),
        ("E4.6.16.9", "order (step 16, entry by entry): modules[0] has the layout conv2d, modules[1] repeats its name",
         P(doc_edit=_both(lambda d: d["modules"][0].append("conv2d"), _module_edit(1, 0, "q")))),
        ("E4.6.16.6", "order (step 16, the duplicate before the entry's numbers): modules[1] repeats modules[0]'s "
                      "name and has out_features 0", P(doc_edit=_both(_module_edit(1, 0, "q"), _module_edit(1, 2, 0)))),
        ("E4.6.17.2", "order (step 17, n_in's rules before n_out's): n_in = 0 and n_out missing",
         P(doc_edit=_both(_set("n_in", 0), _drop("n_out")))),
        ("E4.6.17.4", "order (step 17, both types before either maximum): n_in = 16 (not the largest in_features) "
                      "and n_out a string", P(doc_edit=_both(_set("n_in", 16), _set("n_out", "8")))),
        ("E4.6.17.5", "order (step 17, n_in before n_out): both differ from the largest in/out_features",
         P(doc_edit=_both(_set("n_in", 16), _set("n_out", 16)))),
        ("E4.6.20.4", "order (step 20.4, code points): base_model keys 'url' and 'arch' (text order url, arch)",
         P(doc_text=lambda t: t.replace('"generator"', '"base_model":{"url":"u","arch":"a"},"generator"'))),
        ("E4.6.20.4", "order (step 20.4, code points): base_model keys U+1F600 then U+FF61 in the text",
         P(doc_text=lambda t: t.replace('"generator"', '"base_model":{"\\ud83d\\ude00":"","\\uff61":""},"generator"'))),
        ("E4.6.21.2", "order (step 21, the list as a whole before any digits): group 1's A is not hex, group 2's "
                      "entry has a fourth key", _doc_bytes(_base(sharing="per-module"), doc_edit=lambda d: (
                          d["projection_sha256"][0].update(A="zz"), d["projection_sha256"][1].update(C="0")))),
        ("E4.6.23.1", "order (step 23.1, list order): extra_tensors lists v.lambda_d then q.lambda_d, both VeRA names",
         P(doc_edit=_set("extra_tensors", ["v.lambda_d", "q.lambda_d"]))),
        ("E4.6.23.1", "order (step 23.1 before 23.2): an extra named q.lambda_d and v.lambda_b missing",
         P(doc_edit=_set("extra_tensors", ["q.lambda_d"]), tensor_edit=lambda p: p.pop("v.lambda_b"))),
        ("E4.6.23.2", "order (spec 4.4, module order, each module's lambda_d then lambda_b): modules v, q; "
                      "v.lambda_b and q.lambda_d missing", V(tensor_edit=lambda p: (p.pop("v.lambda_b"),
                                                                                    p.pop("q.lambda_d")))),
        ("E4.6.23.2", "order (spec 4.4, group order, A before B): per-module stored, B.1 and A.2 missing",
         _doc_bytes(_stored("per-module"), tensor_edit=lambda p: (p.pop("B.1"), p.pop("A.2")))),
        ("E4.6.23.2", "order (spec 4.4, extra tensors in list order): extra_tensors [zb, za], both missing",
         P(doc_edit=_set("extra_tensors", ["zb", "za"]))),
        ("E4.6.23.2", "order (step 23 before step 24): q.lambda_b has 5 values, v.lambda_b is missing", P(tensor_edit=lambda p: (p.__setitem__("q.lambda_b", (np.zeros(5, np.float32),
                                                                                          "F32")), p.pop("v.lambda_b")))),
        ("E4.6.24.1", "order (spec 4.4 in step 24): modules v, q; q.lambda_d and v.lambda_b of wrong shapes",
         V(tensor_edit=lambda p: (p.__setitem__("q.lambda_d", (np.zeros(3, np.float32), "F32")),
                                  p.__setitem__("v.lambda_b", (np.zeros(3, np.float32), "F32"))))),
        ("E4.6.24.2", "order (step 24 tensor by tensor): modules v, q; v.lambda_d as F16 (24.2), v.lambda_b of "
                      "wrong shape (24.1)", V(tensor_edit=lambda p: (
                          p.__setitem__("v.lambda_d", (np.zeros(4, np.float16), "F16")),
                          p.__setitem__("v.lambda_b", (np.zeros(3, np.float32), "F32"))))),
        ("E4.6.24.3", "order (step 24 tensor by tensor, projections in group order): A.1 as F64, B.1 of wrong shape",
         _doc_bytes(_stored("per-module"), tensor_edit=lambda p: (p.__setitem__("A.1", (p["A.1"][0], "F64")),
                                                                  p.__setitem__("B.1", (p["B.1"][0][:7], "F32"))))),
        ("E4.6.25.1", "order (spec 4.4 in step 25): modules v, q; NaN in v.lambda_b and in q.lambda_d",
         V(tensor_edit=lambda p: (p.__setitem__("v.lambda_b", (_with(nan, np.zeros(4, np.float32)), "F32")),
                                  p.__setitem__("q.lambda_d", (_with(nan, np.zeros(4, np.float32)), "F32"))))),
    ]
    ad = _stored(extra=True)
    A, B = ad.stored[0]
    ad.stored[0] = (A, _with(nan, B))
    ad.extra["A0.w"] = (_with(nan, np.ones((2, 2), np.float32)), "float32")
    out.append(("E4.6.25.1", "order (spec 4.4 in step 25, projections before extra tensors): NaN in B and in the "
                             "extra tensor A0.w (first by name)", _doc_bytes(ad)))
    return [(code, comment, data, ()) for code, comment, data in out]


def more_order_files() -> list[Vector]:
    """Orders of steps 20 and 23.3 (appended after the variant files, so no earlier file is renamed)."""
    P = lambda **kw: _doc_bytes(_base(), **kw)  # noqa: E731
    out = [
        ("E4.6.20.3", "order (step 20, every base_model value a string before any key is named): key 'url' "
                      "with the value 1", P(doc_edit=_set("base_model", {"url": 1}))),
        ("E4.6.20.4", "order (step 20, 20.4 before 20.5): base_model keys 'url' and a fingerprint not hex",
         P(doc_edit=_set("base_model", {"fingerprint": "XYZ", "url": "u"}))),
        ("E4.6.23.3", "order (step 23.3, ascending names, not the header's order): unexpected tensors zz.w then "
                      "aa.w in the header", _edit_header(P(tensor_edit=lambda p: p.update(
                          {"aa.w": (np.zeros(1, np.float32), "F32"), "zz.w": (np.zeros(1, np.float32), "F32")})),
                          _zz_first)),
    ]
    return [(code, comment, data, ()) for code, comment, data in out]


def step_pair_files() -> list[Vector]:
    """Two faults in adjacent steps of spec 4.6 (the table's order decides: the earlier step's code),
    for each pair of steps 3-23 that no earlier vector pins (11/12, 23/24, 24/25 and 25/26 have
    theirs; 2/3 is invalid-004's length, over the limit and past the end; 1/2 cannot both fail: step
    2 reads the length step 1 finds missing). Appended last, so no earlier file is renamed."""
    P = lambda **kw: _doc_bytes(_base(), **kw)  # noqa: E731
    peft = _base(generator="peft-mt19937")
    out = [
        ("E4.6.8.3", "order (step 8 before step 9): vera_format 'pt' and vera_spec_version '2.0'",
         P(meta_edit=_both(_set(FORMAT_KEY, "pt"), _set(VERSION_KEY, "2.0")))),
        ("E4.6.9.2", "order (step 9 before step 10): vera_spec_version '2.0' and vera_config missing",
         P(meta_edit=_both(_set(VERSION_KEY, "2.0"), _drop(CONFIG_KEY)))),
        ("E4.6.10.6", "order (step 10 before step 11): the key r twice and an unknown field zeta",
         P(doc_edit=_set("zeta", 1), doc_text=lambda t: t.replace('"r":4', '"r":4,"r":4'))),
        ("E4.6.12.2", "order (step 12 before step 13): r = 0 and generator missing",
         P(doc_edit=_both(_set("r", 0), _drop("generator")))),
        ("E4.6.13.2", "order (step 13 before step 14): generator 'mt' and the seed the number 5",
         P(doc_edit=_both(_set("generator", "mt"), _set("seed", 5)))),
        ("E4.6.14.3", "order (step 14 before step 15): seed 'x' and sharing 'both'",
         P(doc_edit=_both(_set("seed", "x"), _set("sharing", "both")))),
        ("E4.6.15.2", "order (step 15 before step 16): sharing 'both' and modules[0] with in_features 0",
         P(doc_edit=_both(_set("sharing", "both"), _module_edit(0, 1, 0)))),
        ("E4.6.15.3", "order (step 15 before step 16): peft-mt19937 with per-module sharing (15.3) and "
                      "module_prefix 'model' without its '.'",
         _doc_bytes(peft, doc_edit=_both(_set("sharing", "per-module"), _set("module_prefix", "model")))),
        ("E4.6.16.5", "order (step 16 before step 17): modules[1] named 'a..b' and n_in missing",
         P(doc_edit=_both(_module_edit(1, 0, "a..b"), _drop("n_in")))),
        ("E4.6.17.4", "order (step 17 before step 18): n_out = 0 and vector_dtype 'float8'",
         P(doc_edit=_both(_set("n_out", 0), _set("vector_dtype", "float8")))),
        ("E4.6.18.3", "order (step 18 before step 19): tensor_layout 'zigzag' and dropout 1.5",
         P(doc_edit=_both(_set("tensor_layout", "zigzag"), _set("dropout", 1.5)))),
        ("E4.6.19.1", "order (step 19 before step 20): d_initial 'x' and extra_tensors not a list",
         P(doc_edit=_both(_set("d_initial", "x"), _set("extra_tensors", "head.w")))),
        ("E4.6.20.6", "order (step 20 before step 21): provenance a list and projection_sha256 missing",
         P(doc_edit=_both(_set("provenance", []), _drop("projection_sha256")))),
        ("E4.6.21.2", "order (step 21 before step 22): checksums listed for group 1 and a projection of 10^12 "
                      "elements", P(doc_edit=_both(_huge, lambda d: d["projection_sha256"][0].update(group=1)))),
        ("E4.6.22.1", "order (step 22 before step 23): a projection of 10^12 elements and v.lambda_b missing",
         P(doc_edit=_huge, tensor_edit=lambda p: p.pop("v.lambda_b"))),
    ]
    meta = {FORMAT_KEY: FORMAT_NAME, VERSION_KEY: SPEC_VERSION}
    f32 = lambda shape, off: {"dtype": "F32", "shape": shape, "data_offsets": off}  # noqa: E731
    out += [  # steps 3-8, on the container
        ("E4.6.3.1", "order (step 3 before step 4): header length 1000 past the end of the file, and the bytes "
                     "present begin with a space", _raw(b' {"__metadata__":{}}', length=1000)),
        ("E4.6.4.7", "order (step 4 before step 5): a header with the key x twice and no __metadata__",
         _raw(b'{"x":{},"x":{}}')),
        ("E4.6.5.2", "order (step 5 before step 6): __metadata__ value 1 (not a string) and tensor a of dtype I8",
         _raw_header({"__metadata__": {FORMAT_KEY: 1}, "a": {"dtype": "I8", "shape": [1], "data_offsets": [0, 1]}},
                     b"\0")),
        ("E4.6.6.2", "order (step 6 before step 7): tensor b of dtype I8, and a gap of 4 bytes after tensor a",
         _raw_header({"__metadata__": meta, "a": f32([1], [0, 4]), "b": {"dtype": "I8", "shape": [1],
                                                                         "data_offsets": [8, 9]}}, b"\0" * 9)),
        ("E4.6.7.2", "order (step 7 before step 8): 4 bytes after the last tensor, and no vera_format (a plain "
                     "safetensors file)", _raw_header({"__metadata__": {}, "a": f32([1], [0, 4])}, b"\0" * 8)),
    ]
    return [(code, comment, data, ()) for code, comment, data in out]


# --- what spec 1.2 decided --------------------------------------------------------------------------

def finding_files() -> list[Vector]:
    """Invalid files for the points spec 1.2 decided (integers, null, versions, closed structures)."""
    P = lambda **kw: _doc_bytes(_base(), **kw)  # noqa: E731
    meta = {FORMAT_KEY: FORMAT_NAME, VERSION_KEY: SPEC_VERSION}
    out = [
        ("E4.6.12.2", "r = 4.0, not an integer literal (spec 4.3: an integer has no fraction or exponent)",
         P(doc_text=lambda t: t.replace('"r":4', '"r":4.0'))),
        ("E4.6.12.2", "r = 4e0, not an integer literal", P(doc_text=lambda t: t.replace('"r":4', '"r":4e0'))),
        ("E4.6.16.7", "in_features 8.0, not an integer literal", P(doc_text=lambda t: t.replace('["q",8,8]', '["q",8.0,8]'))),
        ("E4.6.21.2", "group 0.0, not an integer literal", P(doc_text=lambda t: t.replace('"group":0', '"group":0.0'))),
        ("E4.6.21.2", "group true for group 1 (a boolean is not an integer)", _doc_bytes(
            _base(sharing="per-module"), doc_text=lambda t: t.replace('"group":1', '"group":true'))),
        ("E4.6.6.3", "shape [4.0] in the header, not an integer literal", _raw_header({"__metadata__": meta, "x": {
            "dtype": "F32", "shape": [4.0], "data_offsets": [0, 16]}}, b"\0" * 16)),
        ("E4.6.6.5", "data_offsets [0, 16.0] in the header, not an integer literal", _raw_header({"__metadata__": meta, "x": {
            "dtype": "F32", "shape": [4], "data_offsets": [0, 16.0]}}, b"\0" * 16)),
        ("E4.6.12.2", "r = null: null is a value of no field's type, not absence (spec 4.3)",
         P(doc_edit=_set("r", None))),
        ("E4.6.18.3", "tensor_layout = null: no default is put in for null (spec 4.3)",
         P(doc_edit=_set("tensor_layout", None))),
        ("E4.6.19.1", "d_initial = null", P(doc_edit=_set("d_initial", None))),
        ("E4.6.14.1", "seed = null with the stored generator: present, so not absent (spec 4.3)",
         _doc_bytes(_stored(), doc_edit=_set("seed", None))),
        ("E4.6.14.3", "seed = null with philox4x32-10 (not 'missing')", P(doc_edit=_set("seed", None))),
        ("E4.6.16.3", "modules = null (not 'missing')", P(doc_edit=_set("modules", None))),
        ("E4.6.20.3", "base_model = null (not an absent base_model)", P(doc_edit=_set("base_model", None))),
        ("E4.6.5.2", "__metadata__ = null in the header (not 'missing')",
         _raw_header({"__metadata__": None, "x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
                     b"\0" * 4)),
        ("E4.6.9.2", "version 1.01 (a leading zero)", P(meta_edit=_set(VERSION_KEY, "1.01"))),
        ("E4.6.9.2", "version 01.1 (a leading zero)", P(meta_edit=_set(VERSION_KEY, "01.1"))),
        ("E4.6.9.2", "version 1.1.0 (three parts)", P(meta_edit=_set(VERSION_KEY, "1.1.0"))),
        ("E4.6.9.2", "version '1.1 ' (a space)", P(meta_edit=_set(VERSION_KEY, "1.1 "))),
        ("E4.6.20.4", "minor version 1.9 with an unknown base_model key (base_model is closed in every 1.x)",
         P(version="1.9", doc_edit=_set("base_model", {"name": "x", "url": "y"}))),
        ("E4.6.16.4", "minor version 1.9 with a module entry of five elements (entries are closed in every 1.x)",
         P(version="1.9", doc_edit=lambda d: d["modules"][0].extend(["linear", "x"]))),
        ("E4.6.21.2", "minor version 1.9 with a fourth key in a checksum entry (closed in every 1.x)",
         P(version="1.9", doc_edit=lambda d: d["projection_sha256"][0].update(note="x"))),
        ("E4.6.6.1", "minor version 1.9 with a fourth key in a header entry (closed in every 1.x)",
         _edit_header(P(version="1.9"), lambda t: t.replace('"dtype":"F32"', '"dtype":"F32","x":1', 1))),
        ("E4.6.11.1", "minor version 1.0 (at most the profile's 1.1) with an unknown field",
         P(version="1.0", doc_edit=_set("alpha", 8))),
    ]
    return [(code, comment, data, ()) for code, comment, data in out]


def valid_finding_files() -> list[tuple[str, bytes]]:
    """Valid files for the points spec 1.2 decided."""
    newer = _doc_bytes(_base(), version="1.10", doc_edit=_set("alpha", 16))
    minus_zero = _doc_bytes(_base(), doc_text=lambda t: t.replace('"group":0', '"group":-0'))
    return [("minor version 1.10 (ten, above 1.1, not 1.1 again) with an unknown field: ignored (spec 4.8)", newer),
            ("checksum group written -0: an integer literal whose value is 0 (spec 4.3 Values)", minus_zero)]


__all__ = ["variant_files", "order_files", "more_order_files", "step_pair_files", "finding_files", "valid_finding_files", "Vector"]
