"""Mutation fuzzing of the adapter-file reader (spec 4.6): only acceptance or AdapterFileError.

    python tools/fuzz_reader.py --minutes 5          # run for 5 minutes
    python tools/fuzz_reader.py --cases 50000 --seed 1

Mutants come from every valid vector in spec/vectors/files (and a few built here): byte
flips, cuts and inserts; header edits (dtype, shape, data_offsets, names); document edits
(every field replaced by huge integers, floats, NaN/Infinity literals, strings, lists, deep
nesting, duplicate keys, unknown keys, unpaired surrogates and surrogate pairs); NaN/Inf tensor
values; length-prefix edits; and the structures of issue 23: structural characters written as
``\\u`` escapes in the header (a few, or a document flooded past 2^20 of them), duplicate keys
around values nested 63-66 deep (header and document), unpaired surrogate escapes in any string.
Each mutant is read from memory with ``read_adapter``, the checks of ``load_adapter`` in its order.

Six oracles besides "only acceptance or AdapterFileError":

- sparse huge files: a tensor of 4 KiB to 1 TiB is declared over a data section that is a hole
  (``HoleFile``: never stored); a reader that reads more than 64 MiB of the hole fails the case
  (``HoleRead``): every rule that needs no tensor bytes comes first (spec 4.1);
- escape invariance: a mutant whose header is JSON is read again with characters of its
  strings (the header's, and the document's inside ``vera_config``) written as ``\\u`` escapes;
  the verdict (code and field) must not change (spec 4.1.1: rules of the text, escapes decoded);
- repeated-key order: a key repeated around a value nested 62-65 deep gets one verdict whether
  the deep value comes first (dropped by the repeat) or last (spec 4.1.1: depth of the text);
- surrogate pairs: an unpaired surrogate escape put into a string where a pair (\\ud83d\\ude00)
  lets the file pass rule 4 is refused by rule 4 (E4.6.4.4 in the header, E4.6.10.3 in the
  document); and an accepted file's document holds Unicode text only;
- document alone: a file that reaches step 10 gets, for steps 10-21, the verdict its document
  gets alone (``parse_config``): the document's own characters are counted (4.6.3).

Printed: cases, outcomes by rule code, exception types other than AdapterFileError (must be
none), escape-invariance cases and mismatches, sparse cases, peak memory (max RSS), the slowest
case. Exit status 1 if any outcome was not acceptance or AdapterFileError, an oracle failed, or
a case took over 2 s.
"""
from __future__ import annotations

import argparse
import collections
import io
import json
import random
import re
import resource
import sys
import time
import traceback
from typing import Callable, Iterator

import numpy as np

from vera_ref.adapter import read_adapter
from vera_ref.errors import AdapterFileError
from vera_ref.jsontext import MAX_STRUCTURAL
from vera_ref.metadata import config_document, parse_config
from vera_ref.resources import vectors_dir
from vera_ref.rules import CODES

SLOW_S = 2.0
ORDER = {code: i for i, code in enumerate(CODES)}  # spec 4.6: the order of the rules
HOLE_READ_LIMIT = 64 << 20  # bytes of a sparse case's hole a reader may read (only a listed tensor's)
HOLE_SIZES = (4096, 16 << 20, 2 << 30, 50 << 30, 1 << 40)
ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}


def seeds() -> list[bytes]:
    """The valid file vectors' bytes."""
    env = json.loads((vectors_dir() / "files.json").read_text())
    return [(vectors_dir() / "files" / t["file"]).read_bytes() for t in env["testGroups"][0]["tests"]]


def _split(blob: bytes) -> tuple[dict, bytes] | None:
    try:
        n = int.from_bytes(blob[:8], "little")
        return json.loads(blob[8:8 + n]), blob[8 + n:]
    except Exception:
        return None


def _join(header: dict | str, data: bytes, pad: bool = True) -> bytes:
    text = (header if isinstance(header, str) else json.dumps(header, separators=(",", ":"))).encode(
        "utf-8", "surrogatepass")
    if pad:
        text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data


def _deep(rng: random.Random) -> str:
    d = rng.choice([63, 64, 65, 100, 1000, 5000])
    return "[" * d + "]" * d


def _weird_value(rng: random.Random) -> object:
    """A replacement value; strings starting with \\x00RAW are spliced into the JSON text as-is."""
    return rng.choice([
        0, -1, 1, 2**53 + 1, 2**63, 2**64 - 1, 2**64, -(2**63) - 1, 10**400, True, None, 1.5, -0.0, 1e308,
        "", "x" * rng.choice([1, 200, 100000]), [], {}, [1, 2], ["F32"], {"a": 1}, "F32", "BF16", "I8",
        "\x00RAW" + "NaN", "\x00RAW" + "Infinity", "\x00RAW" + "-Infinity", "\x00RAW" + "1e400",
        "\x00RAW" + "9" * rng.choice([25, 5000]), "\x00RAW" + _deep(rng), "\x00RAW" + "0." + "1" * 150,
        "\udc80", "\ud800x", "a\ud83d", "\U0001F600", "\U0001F600\udc80", "\\udc80",  # surrogates (4.1.1 rule 4)
    ])


def _dump_with_raw(obj: object) -> str:
    """json.dumps where string values starting with \\x00RAW are written without quotes."""
    marks: dict[str, str] = {}

    def walk(v):
        if isinstance(v, str) and v.startswith("\x00RAW"):
            key = f"@@RAW{len(marks)}@@"
            marks[key] = v[4:]
            return key
        if isinstance(v, list):
            return [walk(x) for x in v]
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        return v
    text = json.dumps(walk(obj), separators=(",", ":"))
    for key, raw in marks.items():
        text = text.replace(json.dumps(key), raw)
    return text


def _paths(obj: object, prefix: tuple = ()) -> Iterator[tuple]:
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _replace(obj: object, path: tuple, value: object) -> object:
    if not path:
        return value
    parent = obj
    for p in path[:-1]:
        parent = parent[p]
    parent[path[-1]] = value
    return obj


def _edit_tree(rng: random.Random, tree: object) -> str:
    """Replace, delete or add one node of a JSON tree; returns the new JSON text."""
    paths = list(_paths(tree))
    path = rng.choice(paths)
    op = rng.random()
    if op < 0.6 or not path:
        tree = _replace(tree, path, _weird_value(rng))
    elif op < 0.75:
        parent = tree
        for p in path[:-1]:
            parent = parent[p]
        del parent[path[-1]]
    else:
        parent = tree
        for p in path[:-1]:
            parent = parent[p]
        if isinstance(parent, dict):
            parent[rng.choice(["zz_unknown", "alpha", path[-1] + "_"])] = _weird_value(rng)
        else:
            parent.append(_weird_value(rng))
    text = _dump_with_raw(tree)
    if rng.random() < 0.1 and isinstance(tree, dict) and tree:  # a duplicate key, textually
        k = rng.choice(list(tree))
        text = text[:-1] + "," + json.dumps(k) + ":" + _dump_with_raw(_weird_value(rng)) + "}"
    return text


def _header_text(blob: bytes) -> str | None:
    n = int.from_bytes(blob[:8], "little")
    try:
        return blob[8:8 + n].decode("utf-8")
    except UnicodeDecodeError:
        return None


def _with_header_text(blob: bytes, text: str) -> bytes:
    n = int.from_bytes(blob[:8], "little")
    return _join(text.rstrip(" "), blob[8 + n:])


_CONFIG_STRING = re.compile(r'"vera_config":"((?:[^"\\]|\\.)*)"')


def _escaped_structure(rng: random.Random, blob: bytes) -> bytes:
    """The document's structural characters written as \\u escapes in the header: a few (the header's
    count drops, the document's does not), or a flood of escaped '[' or ',' past 2^20 (E4.6.10.2
    unless an earlier rule breaks)."""
    text = _header_text(blob)
    m = None if text is None else _CONFIG_STRING.search(text)
    if m is None:
        return blob
    body = m.group(1)
    if rng.random() < 0.1:  # the flood (6 MB): rarer, it costs a read of the header
        n = MAX_STRUCTURAL + rng.choice([-40, 1, 100])
        esc = rng.choice(["\\u005b", "\\u002c"])
        body = esc * n + body if esc == "\\u005b" else body.replace('\\"provenance\\":{}',
                                                                      '\\"provenance\\":{\\"n\\":\\"' + esc * n + '\\"}')
    else:
        chars = list(body)
        for _ in range(rng.randint(1, 20)):
            i = rng.randrange(len(chars)) if chars else 0
            if chars and chars[i] in ",[{" and (i == 0 or chars[i - 1] != "\\"):
                chars[i] = f"\\u{ord(chars[i]):04x}"
        body = "".join(chars)
    return _with_header_text(blob, text[:m.start(1)] + body + text[m.end(1):])


def dup_deep_pair(rng: random.Random, blob: bytes) -> tuple[bytes, bytes] | None:
    """A key repeated around a value nested 62-65 deep, in the header or in the document, in both
    orders: the deep value dropped by the repeat, or kept. Spec 4.1.1 measures depth on the text,
    so the two files get one verdict (the repeated-key order oracle)."""
    split = _split(blob)
    if split is None or not isinstance(split[0], dict):
        return None
    header, data = split
    n = rng.choice([62, 63, 64, 65])
    deep, flat = "[" * n + "]" * n, rng.choice(["1", '"x"', "{}"])
    meta = header.get("__metadata__")
    if rng.random() < 0.5 or not isinstance(meta, dict) or not isinstance(meta.get("vera_config"), str):
        key = json.dumps(rng.choice(list(header) + ["zz"]))
        text = _dump_with_raw(header)[:-1]
        return tuple(_join(text + f",{key}:{a},{key}:{b}}}", data) for a, b in ((deep, flat), (flat, deep)))
    doc = meta["vera_config"].rstrip()
    if not doc.endswith("}"):
        return None
    key = json.dumps(rng.choice(["provenance", "r", "zz", "base_model"]))
    out = []
    for a, b in ((deep, flat), (flat, deep)):
        meta["vera_config"] = doc[:-1] + f",{key}:{a},{key}:{b}}}"
        out.append(_join(header, data))
    return out[0], out[1]


def _dup_deep(rng: random.Random, blob: bytes) -> bytes:
    pair = dup_deep_pair(rng, blob)
    return blob if pair is None else rng.choice(pair)


SURROGATES = ("\\udc80", "\\ud800", "\\ud800\\u0041", "\\uDBFF", "\\ud83d\\ude00", "\\\\udc80", "\\ud83d\\ud83d\\ude00")
LONE = ("\\udc80", "\\ud800", "\\uDBFF", "\\ud800\\u0041", "\\ud83d\\ud83d\\ude00")


def surrogate_pair(rng: random.Random, blob: bytes) -> tuple[bytes, bytes, str] | None:
    """One string of the header or (one level down) of the document, with an unpaired surrogate
    escape inserted, and the same file with a pair (\\ud83d\\ude00) there instead; and the rule
    the unpaired one breaks: "E4.6.4.4" (header) or "E4.6.10.3" (document). (The surrogate pair
    oracle: where the paired file passes that rule, the unpaired one is refused by it.)"""
    text = _header_text(blob)
    if text is None:
        return None
    m = _CONFIG_STRING.search(text)
    in_doc = m is not None and rng.random() < 0.5
    if in_doc:  # after one of the document's \" quotes
        spots = [m.start(1) + k.end() for k in re.finditer(r'\\"', m.group(1))]
    else:
        spots = [k.end() for k in re.finditer(r'(?<!\\)"', text)]
    if not spots:
        return None
    i = rng.choice(spots)
    lone, pair = rng.choice(LONE), "\\ud83d\\ude00"
    if in_doc:  # the document's own escape, escaped once more in the header
        lone, pair = lone.replace("\\", "\\\\"), pair.replace("\\", "\\\\")
    return (_with_header_text(blob, text[:i] + lone + text[i:]), _with_header_text(blob, text[:i] + pair + text[i:]),
            "E4.6.10.3" if in_doc else "E4.6.4.4")


def _surrogate(rng: random.Random, blob: bytes) -> bytes:
    """An unpaired surrogate escape (or a pair, or an escaped backslash before 'udc80') at the start
    of a string of the header or, one level down, of a string of the document."""
    text = _header_text(blob)
    if text is None:
        return blob
    esc = rng.choice(SURROGATES)
    m = _CONFIG_STRING.search(text)
    if m is not None and rng.random() < 0.5:  # a string of the document: after one of its \" quotes
        spots = [m.start(1) + k.end() for k in re.finditer(r'\\"', m.group(1))]
        esc = esc.replace("\\", "\\\\")  # the document's own escape, escaped once more in the header
    else:
        spots = [k.end() for k in re.finditer(r'(?<!\\)"', text)]
    if not spots:
        return blob
    i = rng.choice(spots)
    return _with_header_text(blob, text[:i] + esc + text[i:])


def mutate(rng: random.Random, blob: bytes) -> bytes:
    """One mutant of a valid file."""
    kind = rng.random()
    if kind >= 0.86:  # the structures of issue 23
        return (_escaped_structure if kind < 0.91 else _dup_deep if kind < 0.96 else _surrogate)(rng, blob)
    kind /= 0.86  # the older kinds keep their shares among themselves
    split = _split(blob)
    if kind < 0.3 or split is None:  # bytes
        b = bytearray(blob)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(max(len(b), 1))
            op = rng.random()
            if op < 0.4 and b:
                b[i % len(b)] ^= 1 << rng.randrange(8)
            elif op < 0.6:
                del b[i:i + rng.randint(1, 16)]
            elif op < 0.8:
                b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
            else:
                b[i:i] = b[i:i + rng.randint(1, 64)]
        return bytes(b)
    header, data = split
    if kind < 0.5:  # the header's entries
        return _join(_edit_tree(rng, header), data, pad=rng.random() < 0.8)
    if kind < 0.8:  # the document inside __metadata__.vera_config
        meta = header.get("__metadata__", {})
        try:
            doc = json.loads(meta["vera_config"])
        except Exception:
            return _join(header, data)
        meta["vera_config"] = _edit_tree(rng, doc)
        return _join(header, data)
    if kind < 0.9:  # tensor values: NaN / Inf bytes over part of the data
        d = bytearray(data)
        if d:
            pat = rng.choice([b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x7f", b"\x00\x7c", b"\x80\x7f", b"\xff" * 8])
            i = rng.randrange(len(d))
            d[i:i + len(pat)] = pat[: len(d) - i]
        return _join(header, bytes(d))
    if kind < 0.95:  # the length prefix
        n = int.from_bytes(blob[:8], "little")
        n = rng.choice([0, 1, n - 1, n + 1, n + 8, 2**63, 2**64 - 1, 100_000_000, len(blob)])
        return (n % 2**64).to_bytes(8, "little") + blob[8:]
    # the metadata map
    meta = header.setdefault("__metadata__", {})
    key = rng.choice(["vera_format", "vera_spec_version", "vera_config", "other"])
    meta[key] = rng.choice(["vera-adapter", "1.1", "1.99", "2.0", "1." + "9" * 50, "", "x"])
    if rng.random() < 0.2:
        header["__metadata__"] = _weird_value(rng)
        return _join(_dump_with_raw(header), data)
    return _join(header, data)


class HoleRead(RuntimeError):
    """A reader read more of a sparse case's hole than a listed tensor could need."""


class HoleFile(io.RawIOBase):
    """A read-only file of ``len(head) + hole`` bytes: ``head``, then ``hole`` zero bytes that are
    never stored. Reading more than HOLE_READ_LIMIT bytes of the hole past the header (its length
    prefix says where the header ends: a header may lie in the hole) raises HoleRead."""

    def __init__(self, head: bytes, hole: int) -> None:
        super().__init__()
        self.head, self.hole, self.pos, self.hole_read = head, hole, 0, 0
        self.data_start = 8 + int.from_bytes(head[:8].ljust(8, b"\0"), "little")

    @property
    def size(self) -> int:
        return len(self.head) + self.hole

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = pos if whence == 0 else self.pos + pos if whence == 1 else self.size + pos
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buf) -> int:
        view = memoryview(buf).cast("B")
        n = max(0, min(len(view), self.size - self.pos))
        from_head = max(0, min(n, len(self.head) - self.pos))
        view[:from_head] = self.head[self.pos:self.pos + from_head]
        zeros = n - from_head
        if zeros:
            self.hole_read += max(0, self.pos + n - max(self.pos + from_head, self.data_start))
            if self.hole_read > HOLE_READ_LIMIT:
                raise HoleRead(f"read {self.hole_read} bytes of a {self.hole}-byte hole")
            view[from_head:n] = bytes(zeros)
        self.pos += n
        return n


def sparse_case(rng: random.Random, blob: bytes) -> HoleFile:
    """A valid file (or one of its mutants) with one more tensor declared over a hole of 4 KiB to
    1 TiB: unlisted (E4.6.23.3 unless an earlier rule breaks) or, when small, listed as an extra
    tensor (then read: zeros, accepted)."""
    if rng.random() < 0.3:
        blob = mutate(rng, blob)
    split = _split(blob)
    if split is None:
        return HoleFile(blob, rng.choice(HOLE_SIZES))
    header, data = split
    hole = rng.choice(HOLE_SIZES)
    dtype = rng.choice(list(ITEMSIZE))
    name = rng.choice(["zz_big", "big", "a.big", "lambda_d", "q.lambda_d"])
    entry = {"dtype": dtype, "shape": [hole // ITEMSIZE[dtype]], "data_offsets": [len(data), len(data) + hole]}
    if isinstance(header, dict):
        header[name] = entry
        meta = header.get("__metadata__")
        if hole <= 16 << 20 and isinstance(meta, dict) and rng.random() < 0.5:
            try:
                doc = json.loads(meta["vera_config"])
                doc["extra_tensors"] = sorted(set(doc.get("extra_tensors", [])) | {name})
                meta["vera_config"] = json.dumps(doc, sort_keys=True, separators=(",", ":"))
            except Exception:  # noqa: BLE001 - a mutant's document need not be JSON
                pass
    return HoleFile(_join(header, data) if isinstance(header, dict) else blob, hole)


def _escape_strings(rng: random.Random, t: str) -> str:
    """``t`` (JSON text) with some characters of its strings written as \\u escapes (a character
    outside the BMP as its surrogate pair); escapes and control characters are left as they are."""
    out, i, n, in_string = [], 0, len(t), False
    while i < n:
        c = t[i]
        if in_string and c == "\\":
            k = 6 if t[i + 1:i + 2] == "u" else 2
            out.append(t[i:i + k])
            i += k
            continue
        if c == '"':
            in_string = not in_string
        elif in_string and c >= " " and rng.random() < 0.2:
            e = c.encode("utf-16-be", "surrogatepass")
            c = "".join(f"\\u{e[k]:02x}{e[k + 1]:02x}" for k in range(0, len(e), 2))
        out.append(c)
        i += 1
    return "".join(out)


def escape_variant(rng: random.Random, blob: bytes) -> bytes | None:
    """The same file with characters of its strings written as \\u escapes: in the header's strings,
    or in the document's (inside vera_config, when the document is JSON); None when the header is
    not JSON or is large (no variant)."""
    text = _header_text(blob)
    if text is None or len(text) > 100_000:
        return None
    try:
        header = json.loads(text)
    except (ValueError, RecursionError):
        return None
    m = _CONFIG_STRING.search(text)
    if m is not None and rng.random() < 0.5:  # the document's own escapes
        meta = header.get("__metadata__") if isinstance(header, dict) else None
        doc = meta.get("vera_config") if isinstance(meta, dict) else None
        try:
            json.loads(doc)
        except (TypeError, ValueError, RecursionError):
            return None
        if json.dumps(doc) != '"' + m.group(1) + '"':  # the first match is not __metadata__'s own
            return None
        return _with_header_text(blob, text[:m.start(1) - 1] + json.dumps(_escape_strings(rng, doc)) + text[m.end(1) + 1:])
    return _with_header_text(blob, _escape_strings(rng, text))


def document_verdict(blob: bytes) -> str | None | bool:
    """The code ``parse_config`` gives the document of ``blob`` read alone, None when it passes, or
    False when the file has no such document (its header is not JSON, or no vera_config string)."""
    text = _header_text(blob)
    try:
        meta = json.loads(text)["__metadata__"]
        doc, version = meta["vera_config"], meta.get("vera_spec_version")
    except Exception:  # noqa: BLE001 - no document to compare
        return False
    if not isinstance(doc, str) or not isinstance(version, str):
        return False
    try:
        parse_config(doc, version)
    except AdapterFileError as exc:
        return exc.code
    return None


def _verdict(kind: str, value: object) -> tuple:
    return (kind,) if kind == "accepted" else (kind, getattr(value, "code", None), getattr(value, "field", None),
                                               type(value).__name__)


def outcome(blob: bytes | HoleFile) -> tuple[str, object]:
    """("accepted", adapter) | ("rejected", AdapterFileError) | ("other", exception)."""
    f, size = (blob, blob.size) if isinstance(blob, HoleFile) else (io.BytesIO(blob), len(blob))
    try:
        return "accepted", read_adapter(f, size)
    except AdapterFileError as exc:
        return "rejected", exc
    except BaseException as exc:  # noqa: BLE001 - the fuzzer's job is to find these
        return "other", exc


def _oracles(rng: random.Random, stats: dict, seed_blob: bytes, blob: bytes, kind: str, value: object) -> None:
    """The oracles of the module docstring on one mutant (``blob``, made from ``seed_blob``), whose
    outcome is (``kind``, ``value``); counts and the first mismatch go into ``stats``."""
    if kind == "accepted":  # an accepted file's strings are Unicode text (spec 4.1.1 rule 4)
        try:
            json.dumps(config_document(value.config), ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            stats["not_unicode"] += 1
    if rng.random() < 0.05:  # the surrogate pair oracle
        trio = surrogate_pair(rng, seed_blob if rng.random() < 0.5 else blob)
        if trio is not None:
            lone, paired, rule = trio
            k1, v1 = outcome(paired)
            if k1 == "accepted" or (k1 == "rejected" and ORDER[v1.code] > ORDER[rule]):
                stats["surrogate_pairs"] += 1
                k2, v2 = outcome(lone)
                if not (k2 == "rejected" and v2.code == rule):
                    stats["surrogate_mismatch"] += 1
                    if stats["first_mismatch"] is None:
                        stats["first_mismatch"] = (paired, lone, _verdict(k1, v1), _verdict(k2, v2))
    if kind == "accepted" or ORDER.get(getattr(value, "code", None), 0) >= ORDER["E4.6.10.1"]:
        want = document_verdict(blob)  # the document-alone oracle
        if want is not False:
            stats["documents"] += 1
            got = None if kind == "accepted" or ORDER[value.code] > ORDER["E4.6.21.3"] else value.code
            if want != got:
                stats["document_mismatch"] += 1
                if stats["first_mismatch"] is None:
                    stats["first_mismatch"] = (blob, blob, ("in the file", got), ("alone", want))
    if rng.random() < 0.03:  # the repeated-key order oracle
        pair = dup_deep_pair(rng, seed_blob)
        if pair is not None:
            stats["orders"] += 1
            v1, v2 = (_verdict(*outcome(b)) for b in pair)
            if v1 != v2:
                stats["order_mismatch"] += 1
                if stats["first_mismatch"] is None:
                    stats["first_mismatch"] = (pair[0], pair[1], v1, v2)
    if rng.random() < 0.1:  # the escape-invariance oracle
        variant = escape_variant(rng, blob)
        if variant is not None and not (kind == "rejected" and value.code in ("E4.6.4.2", "E4.6.10.2")):
            # (escapes lower the count of the header or of the document: not invariant there)
            stats["escaped"] += 1
            k2, v2 = outcome(variant)
            if _verdict(k2, v2) != _verdict(kind, value):
                stats["escape_mismatch"] += 1
                if stats["first_mismatch"] is None:
                    stats["first_mismatch"] = (blob, variant, _verdict(kind, value), _verdict(k2, v2))


def run(cases: int | None, seconds: float | None, seed: int, log: Callable[[str], None] = print) -> dict:
    rng = random.Random(seed)
    pool = seeds()
    stats = {"cases": 0, "accepted": 0, "codes": collections.Counter(), "other": collections.Counter(),
             "bad_code": 0, "slowest": (0.0, b""), "over_2s": 0, "first_other": None, "sparse": 0,
             "escaped": 0, "escape_mismatch": 0, "first_mismatch": None, "orders": 0, "order_mismatch": 0,
             "not_unicode": 0, "surrogate_pairs": 0, "surrogate_mismatch": 0, "documents": 0,
             "document_mismatch": 0}
    start = time.perf_counter()
    while True:
        if cases is not None and stats["cases"] >= cases:
            break
        if seconds is not None and time.perf_counter() - start >= seconds:
            break
        seed_blob = rng.choice(pool)
        sparse = rng.random() < 0.05
        blob = sparse_case(rng, seed_blob) if sparse else mutate(rng, seed_blob)
        stats["sparse"] += sparse
        t0 = time.perf_counter()
        kind, value = outcome(blob)
        dt = time.perf_counter() - t0
        if not sparse:
            _oracles(rng, stats, seed_blob, blob, kind, value)
        stats["cases"] += 1
        if dt > stats["slowest"][0]:
            stats["slowest"] = (dt, (blob.head if sparse else blob)[:200])
        stats["over_2s"] += dt > SLOW_S
        if kind == "accepted":
            stats["accepted"] += 1
        elif kind == "rejected":
            stats["codes"][value.code] += 1
            stats["bad_code"] += value.code not in CODES or len(str(value)) > 400
        else:
            stats["other"][type(value).__name__] += 1
            if stats["first_other"] is None:
                stats["first_other"] = (blob, "".join(traceback.format_exception(value)))
    stats["seconds"] = time.perf_counter() - start
    stats["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, help="run this long")
    ap.add_argument("--cases", type=int, help="run this many cases")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.minutes is None and args.cases is None:
        args.minutes = 1.0
    s = run(args.cases, None if args.minutes is None else args.minutes * 60, args.seed)
    print(f"cases                  {s['cases']} in {s['seconds']:.1f} s (seed {args.seed})")
    print(f"accepted               {s['accepted']}")
    print(f"AdapterFileError       {sum(s['codes'].values())} ({len(s['codes'])} distinct rule codes)")
    print(f"other exceptions       {sum(s['other'].values())} {dict(s['other'])}")
    print(f"codes not in spec 4.6 / messages over 400 chars: {s['bad_code']}")
    print(f"sparse huge files      {s['sparse']} (a hole of 4 KiB to 1 TiB; more than "
          f"{HOLE_READ_LIMIT >> 20} MiB of it read: an exception above)")
    print(f"escape invariance      {s['escaped']} variants, {s['escape_mismatch']} verdicts changed")
    print(f"repeated-key order     {s['orders']} pairs, {s['order_mismatch']} verdicts differ")
    print(f"surrogate pairs        {s['surrogate_pairs']} files, {s['surrogate_mismatch']} unpaired ones not refused "
          "by rule 4")
    print(f"accepted, not Unicode  {s['not_unicode']}")
    print(f"document alone         {s['documents']} documents, {s['document_mismatch']} verdicts differ from "
          "the file's")
    print(f"slowest case           {s['slowest'][0] * 1000:.1f} ms; cases over {SLOW_S:.0f} s: {s['over_2s']}")
    print(f"peak memory (max RSS)  {s['peak_rss_mib']:.0f} MiB")
    print("most frequent codes    " + ", ".join(f"{c} {n}" for c, n in s["codes"].most_common(12)))
    if s["first_other"]:
        print("first other exception:\n" + s["first_other"][1])
    if s["first_mismatch"]:
        print(f"first oracle mismatch: {s['first_mismatch'][2]} vs {s['first_mismatch'][3]}")
    return 1 if (s["other"] or s["bad_code"] or s["over_2s"] or s["escape_mismatch"] or s["order_mismatch"]
                 or s["not_unicode"] or s["surrogate_mismatch"] or s["document_mismatch"]) else 0


if __name__ == "__main__":
    sys.exit(main())
