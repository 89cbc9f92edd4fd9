"""Mutation fuzzing of the PEFT import (vera_ref.peft_interop.peft_to_adapter): only an adapter with finite
values, ConversionError or ModelMismatchError (issue 23, findings 8 and 9).

    python tools/fuzz_peft.py --minutes 2 --seed 23
    python tools/fuzz_peft.py --cases 2000 --seed 1

Each case writes a PEFT folder (adapter_config.json, adapter_model.safetensors) made from a valid
one by mutations of the config text (a field set to JSON nested 60 to 100,000 deep, integers of
hundreds of digits, NaN/Infinity literals, 1e400, regular-expression bombs such as ``(a|aa)+$`` in
target_modules / exclude_modules / modules_to_save, patterns of up to a million characters, lone
surrogate escapes, wrong types, repeated keys, byte flips and cuts, invalid UTF-8) and of the
weights (NaN/Inf values, another r, missing or extra tensors, module names the bombs meet, byte
flips, cuts, header edits, huge declared shapes). It is converted with ``dims``, ``in_features`` or
neither, chosen by the case.

Oracles: the outcome is an Adapter whose vectors are all finite, or ConversionError /
ModelMismatchError with a one-line message (anything else is an escape); each case takes under
2 s (timed without tracemalloc); every 4th case is run again under tracemalloc and its Python
allocation peak stays under 64 MiB. Printed: cases, seconds, outcomes by kind and message start,
escapes, multi-line messages, the slowest case and the largest peak. Exit status 1 on any escape,
multi-line message or bound broken.
"""
from __future__ import annotations

import json
import random
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from vera_ref import container  # noqa: E402
from vera_ref.errors import ConversionError, ModelMismatchError  # noqa: E402
from vera_ref.peft_interop import peft_to_adapter  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fuzz_tally import arguments, measure, new_stats, record, report  # noqa: E402

SLOW_S = 2.0
PEAK_MIB = 64
MEMORY_EVERY = 4  # every 4th case is run again under tracemalloc for its allocation peak
GOOD = {"peft_type": "VERA", "r": 2, "target_modules": ["q"], "projection_prng_key": 0, "save_projection": False,
        "bias": "none"}
A28 = "a" * 28 + "!"  # the module name the bombs meet: 28 a's, then no match
BOMBS = [r"(a|aa)+$", r"(a+)+$", r"(a*)*b", r"(.*a){20}", r"(a|a?)+$", r"(?:a+){2,}$", r"(\w+\d*)+$",
         r"((a|b)*)*c", r"(a?){28}a{28}", r"(.*)*!x", r".*q$", r"q", r"[", r"(?P<x>a)(?P=x)", r"a{99999}"]
FIELDS = ["r", "target_modules", "exclude_modules", "modules_to_save", "layers_to_transform", "layers_pattern",
          "projection_prng_key", "save_projection", "d_initial", "vera_dropout", "bias", "peft_type",
          "fan_in_fan_out", "x_unknown"]


def nest(n: int, inner: str = "1") -> str:
    return "[" * n + inner + "]" * n


def hostile_value(rng: random.Random) -> str:
    """A JSON value text (or not quite JSON) of the kinds behind issue 23's findings."""
    k = rng.randrange(16)
    if k == 0:
        return nest(rng.choice([60, 63, 64, 65, 66, 1000, 100_000]), rng.choice(["1", '"q"', "{}"]))
    if k == 1:
        return "1" * rng.choice([20, 400, 5000]) if rng.random() < .5 else str(rng.choice([1 << 63, 1 << 64, -(1 << 63)]))
    if k == 2:
        return rng.choice(["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1e-400", "3.5e38", "1e300", "-0.0",
                           "1." + "1" * 400, "0.5", "2.0", "0", "-1"])
    if k == 3:
        return json.dumps(rng.choice(BOMBS))
    if k == 4:
        return json.dumps([rng.choice(BOMBS) for _ in range(rng.randrange(1, 4))])
    if k == 5:  # huge patterns
        n = rng.choice([1000, 100_000, 1_000_000])
        return json.dumps(rng.choice(["a" * n, "(" * n, "(a|" * (n // 4) + ")" * (n // 4), "a?" * (n // 2) + "a" * (n // 2)]))
    if k == 6:  # lone surrogates, pairs, controls
        return '"' + rng.choice(["\\ud800", "\\udfff", "q\\ud83d", "\\ude00q", "\\ud83d\\ude00", "\\u0000", "\\\\"]) + '"'
    if k == 7:
        return rng.choice(["null", "true", "false", "{}", "[]", '""', '"none"', '"all"', '"lora_only"'])
    if k == 8:
        return json.dumps(["q"] * rng.choice([1, 1000, 100_000]))
    if k == 9:
        return json.dumps([rng.randrange(-3, 1 << 20) for _ in range(rng.randrange(0, 6))])
    if k == 10:
        return json.dumps({"q": rng.choice(BOMBS)})
    if k == 11:
        return '"' + "\\u0061" * rng.choice([10, 100_000]) + '"'
    if k == 12:
        return json.dumps([A28, "q", ".*"])
    if k == 13:
        return "{" + '"a": ' * 1 + nest(rng.choice([63, 65])) + "}"
    if k == 14:
        return str(rng.uniform(-1e6, 1e6))
    return rng.choice(['"q"', '".*"', '"enc.q"', '["enc.q"]', '"^(enc|dec)\\\\.q$"', "[0]", '"layers"'])


def config_text(rng: random.Random) -> str:
    cfg = dict(GOOD)
    if rng.random() < .3:
        cfg["target_modules"] = rng.choice([".*q$", ["enc.q", "dec.q"], "q"])
    body = json.dumps(cfg)
    for _ in range(rng.choice([0, 0, 1, 1, 2, 3])):
        key = rng.choice(FIELDS)
        body = body[:-1] + f', "{key}": {hostile_value(rng)}}}'  # a repeated key: the last one wins in JSON
    return body


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        if not b:
            break
        op = rng.randrange(4)
        i = rng.randrange(len(b))
        if op == 0:
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            del b[i:]
        elif op == 2:
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
        else:
            b[i] = rng.choice(b'{}[]",:\\0e-\xff\xc3')
    return bytes(b)


def weights(rng: random.Random, path: Path, r: int) -> None:
    names = ["enc.q", "dec.q"] if rng.random() < .8 else [A28, "enc.q", A28 + ".b"]
    tensors = {}
    for n in names:
        rr = r if rng.random() < .9 else rng.choice([1, 3, 64])
        d = np.asarray([rng.uniform(-1, 1) for _ in range(rr)], np.float32)
        b = np.asarray([rng.uniform(-1, 1) for _ in range(4)], np.float32)
        if rng.random() < .15:
            (d if rng.random() < .5 else b)[0] = rng.choice([np.nan, np.inf, -np.inf])
        if rng.random() < .9:
            tensors[f"base_model.model.{n}.vera_lambda_d"] = (d, "F32")
        if rng.random() < .9:
            tensors[f"base_model.model.{n}.vera_lambda_b"] = (b, "F32")
        if rng.random() < .05:
            tensors[f"base_model.model.{n}.other"] = (b, "F32")
    if rng.random() < .1:
        tensors["base_model.vera_A"] = (np.ones((r, 6), np.float32), "F32")
    container.write(path, {"format": "pt"}, tensors)
    if rng.random() < .25:
        data = path.read_bytes()
        if rng.random() < .5:  # header edits: dtype, shape and offsets strings
            data = data.replace(rng.choice([b'"F32"', b'"shape":[', b'"data_offsets":[']),
                                rng.choice([b'"F16"', b'"BF16"', b'"F64"', b'"I64"', b'"X"', b'"shape":[99999999999,',
                                            b'"shape":[-1,', b'"data_offsets":[0,']), 1)
        else:
            data = mutate_bytes(rng, data)
        path.write_bytes(data)


def run_case(rng: random.Random, d: Path) -> tuple[str, str]:
    """One case: write the folder, convert it. Returns (outcome kind, detail)."""
    if d.exists():
        shutil.rmtree(d)
    d.mkdir()
    text = config_text(rng)
    raw = text.encode("utf-8", "surrogatepass")
    if rng.random() < .15:
        raw = mutate_bytes(rng, raw)
    (d / "adapter_config.json").write_bytes(raw)
    if rng.random() < .97:
        weights(rng, d / "adapter_model.safetensors", GOOD["r"])
    how = rng.randrange(3)
    kw = {"dims": {"enc.q": (6, 4), "dec.q": (6, 4), A28: (6, 4), A28 + ".b": (6, 4)}} if how == 0 else (
        {"in_features": 6} if how == 1 else {})
    try:
        ad = peft_to_adapter(d, **kw)
    except (ConversionError, ModelMismatchError) as e:
        msg = str(e)
        if "\n" in msg or len(msg) > 1000:
            return "multiline", f"a message over one line or 1000 chars: {msg[:200]!r}"
        return type(e).__name__, msg.replace(str(d), "<dir>")[:48]
    except BaseException as e:  # noqa: BLE001 - the oracle: anything else is an escape
        if isinstance(e, KeyboardInterrupt):
            raise
        return "escape", f"{type(e).__name__}: {str(e)[:200]}\n{traceback.format_exc()}"
    vals = [*ad.lambda_d.values(), *ad.lambda_b.values()]
    if not all(np.isfinite(np.asarray(v, np.float64)).all() for v in vals):
        return "escape", "an accepted adapter holds a non-finite value"
    return "accepted", f"r={ad.config.r}"


def fuzz(cases: int | None = None, seconds: float | None = None, seed: int = 0) -> dict:
    rng = random.Random(seed)
    s = new_stats()
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as t:
        d = Path(t) / "peft"
        while (cases is None or s["cases"] < cases) and (seconds is None or time.perf_counter() - t_start < seconds):
            case_seed = rng.getrandbits(64)
            kind, detail, dt, peak = measure(run_case, case_seed, d, s, MEMORY_EVERY)
            record(s, kind, detail, dt, peak, SLOW_S, PEAK_MIB)
    s["seconds"] = time.perf_counter() - t_start
    return s


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__, argv)
    s = fuzz(args.cases, None if args.minutes is None else args.minutes * 60, args.seed)
    return report(s, args.seed, "kind and message start", SLOW_S, PEAK_MIB)


if __name__ == "__main__":
    sys.exit(main())
