"""Mutation fuzzing of the adapter-file reader (spec 4.6): only acceptance or AdapterFileError.

    python tools/fuzz_reader.py --minutes 5          # run for 5 minutes
    python tools/fuzz_reader.py --cases 50000 --seed 1

Mutants come from every valid vector in spec/vectors/files (and a few built here): byte
flips, cuts and inserts; header edits (dtype, shape, data_offsets, names); document edits
(every field replaced by huge integers, floats, NaN/Infinity literals, strings, lists, deep
nesting, duplicate keys, unknown keys); NaN/Inf tensor values; length-prefix edits.
Each mutant is read from memory (``container.parse`` + ``build_adapter``, the same checks as
``load_adapter``). Printed: cases, outcomes by rule code, exception types other than
AdapterFileError (must be none), peak memory (max RSS), the slowest case and how long it took.
Exit status 1 if any outcome was not acceptance or AdapterFileError, or a case took over 2 s.
"""
from __future__ import annotations

import argparse
import collections
import json
import random
import resource
import sys
import time
import traceback
from typing import Callable, Iterator

import numpy as np

from vera_ref import container
from vera_ref.adapter import build_adapter
from vera_ref.errors import AdapterFileError
from vera_ref.resources import vectors_dir
from vera_ref.rules import CODES

SLOW_S = 2.0


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


def mutate(rng: random.Random, blob: bytes) -> bytes:
    """One mutant of a valid file."""
    kind = rng.random()
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


def outcome(blob: bytes) -> tuple[str, object]:
    """("accepted", adapter) | ("rejected", AdapterFileError) | ("other", exception)."""
    try:
        meta, tensors = container.parse(blob)
        return "accepted", build_adapter(meta, tensors)
    except AdapterFileError as exc:
        return "rejected", exc
    except BaseException as exc:  # noqa: BLE001 - the fuzzer's job is to find these
        return "other", exc


def run(cases: int | None, seconds: float | None, seed: int, log: Callable[[str], None] = print) -> dict:
    rng = random.Random(seed)
    pool = seeds()
    stats = {"cases": 0, "accepted": 0, "codes": collections.Counter(), "other": collections.Counter(),
             "bad_code": 0, "slowest": (0.0, b""), "over_2s": 0, "first_other": None}
    start = time.perf_counter()
    while True:
        if cases is not None and stats["cases"] >= cases:
            break
        if seconds is not None and time.perf_counter() - start >= seconds:
            break
        blob = mutate(rng, rng.choice(pool))
        t0 = time.perf_counter()
        kind, value = outcome(blob)
        dt = time.perf_counter() - t0
        stats["cases"] += 1
        if dt > stats["slowest"][0]:
            stats["slowest"] = (dt, blob[:200])
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
    print(f"slowest case           {s['slowest'][0] * 1000:.1f} ms; cases over {SLOW_S:.0f} s: {s['over_2s']}")
    print(f"peak memory (max RSS)  {s['peak_rss_mib']:.0f} MiB")
    print("most frequent codes    " + ", ".join(f"{c} {n}" for c, n in s["codes"].most_common(12)))
    if s["first_other"]:
        print("first other exception:\n" + s["first_other"][1])
    return 1 if s["other"] or s["bad_code"] or s["over_2s"] else 0


if __name__ == "__main__":
    sys.exit(main())
