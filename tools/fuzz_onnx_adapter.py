"""Mutation fuzzing of vera_onnx's adapter loading: only checked values, OnnxError subclasses, or
AdapterFileError for a VeRA .safetensors file (issue 23, findings 10-12).

    python tools/fuzz_onnx_adapter.py --minutes 2 --seed 23
    python tools/fuzz_onnx_adapter.py --cases 2000 --seed 1

Needs torch, onnx and onnxruntime (a hot-swap and a multi model are exported once at the start).
Four kinds of case, each against the hot-swap or the multi model's parameter shapes:

- ``.onnx_adapter`` files: the writer's good file (or one holding NaN) with bytes flipped, cut,
  inserted, 4-byte words set to huge / negative / zero offsets and lengths, trailing bytes, float
  values set to NaN/Inf; read by ``read_checked`` (the loader of ``VeraOnnxSession.load_adapter``),
  and one case in ten by ``VeraOnnxSession.load_adapter`` itself;
- in-memory tables: {name: array} with NaN, infinities, 1e300 (past float32), wrong dtypes (float64,
  float16, int, bool, object, str), wrong or 0-d shapes, unknown names; ``check_parameters``;
- in-memory ``vera_ref.Adapter`` objects with NaN/inf/huge vectors, another r or seed; ``fit_adapter``;
- VeRA ``.safetensors`` files, good or byte-mutated; ``fit_adapter`` on the path.

Oracles: no exception but OnnxError subclasses (and AdapterFileError for .safetensors input); an
accepted table has every model parameter it names with the model's dtype and shape, all finite;
a refusal's message is one line; each case takes under 2 s (timed without tracemalloc); every 4th
case is run again under tracemalloc and its Python allocation peak stays under 64 MiB. Exit status
1 on any escape, multi-line message or bound broken; 2 if onnxruntime (or torch, onnx) is missing.
"""
from __future__ import annotations

import random
import struct
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "backends", ROOT / "tools"):
    sys.path.insert(0, str(p))
from fuzz_tally import arguments, measure, new_stats, record, report  # noqa: E402

SLOW_S = 2.0
PEAK_MIB = 64
MEMORY_EVERY = 4  # every 4th case is run again under tracemalloc for its allocation peak
SEED, R = 4, 3
BAD_VALUES = [np.nan, np.inf, -np.inf, 1e300, -1e300, 3.5e38, 0.0, -0.0, 1e-45]


def need() -> str | None:
    """None, or the line saying which dependency is missing."""
    for m in ("onnxruntime", "onnx", "torch"):
        try:
            __import__(m)
        except ImportError as e:
            return f"fuzz_onnx_adapter: {m} is not installed ({e}); pip install -e '.[onnx,torch]'"
    return None


def setup(d: Path) -> dict:
    """Export the two models once; the good files and the models' shapes and descriptions."""
    import onnxruntime as ort
    import torch
    from torch import nn

    import vera_ref
    from vera_onnx import export, onnx_adapter
    from vera_onnx.adapters import _load_model
    from vera_onnx.description import describe, parameter_shapes
    from vera_ref import ModuleSpec, new_adapter
    from vera_torch import VeraConfig, get_vera_model
    torch.manual_seed(0)
    m = get_vera_model(nn.Sequential(nn.Linear(6, 3), nn.ReLU(), nn.Linear(3, 5)),
                       VeraConfig(r=R, target_modules=["0", "2"], seed=SEED)).eval()
    x = torch.randn(2, 6)
    export(m, (x,), d / "hotswap.onnx", mode="hotswap", input_names=["x"])
    export(m, (x,), d / "multi.onnx", mode="multi", capacity=2, input_names=["x"])
    mods = [ModuleSpec("0", 6, 3), ModuleSpec("2", 3, 5)]

    def adapter(values=1, r=R, seed=SEED):
        ad = new_adapter(mods, r, seed=seed)
        rng = np.random.default_rng(values)
        for mm in ad.config.modules:
            ad.lambda_d[mm.name][:] = rng.uniform(-1, 1, r)
            ad.lambda_b[mm.name][:] = rng.uniform(-1, 1, mm.out_features)
        return ad
    vera_ref.save_adapter(adapter(), d / "a.safetensors")
    onnx_adapter(d / "a.safetensors", d / "hotswap.onnx", d / "good.onnx_adapter")
    env = {"d": d, "adapter": adapter, "safetensors": (d / "a.safetensors").read_bytes(),
           "good": (d / "good.onnx_adapter").read_bytes(), "models": {}}
    for name in ("hotswap.onnx", "multi.onnx"):
        model = _load_model(d / name)
        desc = describe(model)
        env["models"][name] = (desc, parameter_shapes(model, desc))
    shapes = env["models"]["hotswap.onnx"][1]
    good = {k: np.asarray(v) for k, v in _read(env, d / "good.onnx_adapter", shapes).items()}
    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(1)
    fmt.set_model_version(1)
    fmt.set_parameters({k: ort.OrtValue.ortvalue_from_numpy(
        np.full_like(v, np.nan) if k == "2.lambda_b" else np.ascontiguousarray(v)) for k, v in good.items()})
    fmt.export_adapter(str(d / "nan.onnx_adapter"))
    env["nan"] = (d / "nan.onnx_adapter").read_bytes()
    env["good_params"] = good
    return env


def _read(env, path, shapes):
    from vera_onnx.adapters import read_checked
    return read_checked(path, shapes)


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        if not b:
            break
        op = rng.randrange(7)
        i = rng.randrange(len(b))
        if op == 0:
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            del b[i:]
        elif op == 2:
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
        elif op == 3 and len(b) >= 4:  # a flatbuffer offset or length: huge, negative, zero, self
            j = rng.randrange(len(b) - 3) & ~3
            b[j:j + 4] = struct.pack("<i", rng.choice([0, 1, -1, -4, 1 << 30, (1 << 31) - 1, -(1 << 31), len(b), j]))
        elif op == 4:
            b += bytes(rng.randrange(1, 64))  # trailing bytes
        elif op == 5 and len(b) >= 4:  # a float value somewhere
            j = rng.randrange(len(b) - 3)
            b[j:j + 4] = np.float32(rng.choice(BAD_VALUES)).tobytes()
        else:
            b[i] = rng.randrange(256)
    return bytes(b)


def table(rng: random.Random, shapes: dict, good: dict) -> dict:
    params = {k: np.array(v) for k, v in good.items() if k in shapes}
    if not params:  # the multi model's names: one row of each table
        params = {k: np.zeros(s, dt) for k, (dt, s) in shapes.items()}
    for _ in range(rng.randrange(1, 4)):
        k = rng.choice(sorted(params))
        op = rng.randrange(8)
        v = np.array(params[k])
        if v.dtype.kind != "f":  # the table's mutants build only from float arrays
            continue
        if op == 0 and v.size and v.dtype.kind == "f":
            v.reshape(-1)[rng.randrange(v.size)] = np.float32(rng.choice(BAD_VALUES[:3]))
        elif op == 1:
            params[k] = np.full(v.shape, rng.choice(BAD_VALUES), np.float64)
        elif op == 2:
            params[k] = v.astype(rng.choice([np.float64, np.float16, np.int32, np.bool_, object, str]))
        elif op == 3:
            params[k] = rng.choice([v.reshape(-1)[:max(v.size - 1, 0)], np.float32(1.0), v.reshape(1, -1), np.zeros((0,))])
        elif op == 4:
            params[rng.choice(["x", k + "_", "", "0.lambda_a", "\ud800"])] = v
        elif op == 5:
            del params[k]
        elif op == 6:
            params[k] = [float("nan")] * v.size if rng.random() < .5 else "abc"
        else:
            params[k] = np.full(v.shape, np.float32(rng.choice(BAD_VALUES)), np.float32)
    return params


def run_case(rng: random.Random, env: dict) -> tuple[str, str]:
    import vera_ref
    from vera_onnx.adapters import check_parameters, fit_adapter
    from vera_onnx.errors import OnnxError
    from vera_onnx.serving import VeraOnnxSession
    from vera_ref.errors import AdapterFileError
    model = rng.choice(["hotswap.onnx", "multi.onnx"])
    desc, shapes = env["models"][model]
    d = env["d"]
    kind = rng.choice(["file", "file", "table", "object", "safetensors"])
    allowed: tuple = (OnnxError,)
    params = table(rng, shapes, env["good_params"]) if kind == "table" else None  # built outside the oracle
    try:
        if kind == "file":
            data = env["good"] if rng.random() < .8 else env["nan"]
            if rng.random() < .9:
                data = mutate(rng, data)
            p = d / "case.onnx_adapter"
            p.write_bytes(data)
            if rng.random() < .1:
                sess = env.setdefault("sessions", {}).get(model) or env["sessions"].setdefault(
                    model, VeraOnnxSession(d / model))
                sess.load_adapter("a", p, replace=True)
                y = sess.run(None, {"x": np.linspace(-2, 2, 18, dtype=np.float32).reshape(3, 6)}, adapter="a")[0]
                if not np.isfinite(y).all():
                    return "escape", f"session on {model}: a loaded adapter serves non-finite outputs"
                return "accepted", "session"
            out = _read(env, p, shapes)
        elif kind == "table":
            out = check_parameters(params, shapes)
        elif kind == "object":
            ad = env["adapter"](values=rng.randrange(4), r=rng.choice([R, R, R, 2]), seed=rng.choice([SEED, SEED, 5]))
            for _ in range(rng.randrange(0, 3)):
                vecs = ad.lambda_d if rng.random() < .5 else ad.lambda_b
                v = vecs[rng.choice(sorted(vecs))]
                v[rng.randrange(v.size)] = rng.choice(BAD_VALUES)
            out = fit_adapter(ad, desc, shapes)
        else:
            allowed = (OnnxError, AdapterFileError)
            p = d / "case.safetensors"
            data = env["safetensors"]
            p.write_bytes(mutate(rng, data) if rng.random() < .8 else data)
            out = fit_adapter(p, desc, shapes)
    except allowed as e:
        msg = str(e)
        if "\n" in msg:
            return "multiline", f"{kind}: a message over one line: {msg[:200]!r}"
        return type(e).__name__, f"{kind}: {msg.replace(str(d), '<dir>')[:48]}"
    except BaseException as e:  # noqa: BLE001 - the oracle
        if isinstance(e, KeyboardInterrupt):
            raise
        return "escape", f"{kind} on {model}: {type(e).__name__}: {str(e)[:200]}\n{traceback.format_exc()}"
    for k, v in out.items():
        dt, s = shapes.get(k, (None, None))
        if dt is None or v.dtype != dt or tuple(v.shape) != tuple(s) or not np.isfinite(v).all():
            return "escape", f"{kind} on {model}: accepted {k} {v.dtype} {list(v.shape)} (finite: {np.isfinite(v).all()})"
    return "accepted", kind


def fuzz(cases: int | None = None, seconds: float | None = None, seed: int = 0) -> dict:
    rng = random.Random(seed)
    s = new_stats()
    with tempfile.TemporaryDirectory() as t:
        env = setup(Path(t))
        t_start = time.perf_counter()
        while (cases is None or s["cases"] < cases) and (seconds is None or time.perf_counter() - t_start < seconds):
            case_seed = rng.getrandbits(64)
            with np.errstate(over="ignore"):  # the mutants' own casts of 1e300 to float32 (not the loader's)
                kind, detail, dt, peak = measure(run_case, case_seed, env, s, MEMORY_EVERY)
            record(s, kind, detail, dt, peak, SLOW_S, PEAK_MIB)
        s["seconds"] = time.perf_counter() - t_start
    return s


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__, argv)
    missing = need()
    if missing:
        print(missing, file=sys.stderr)
        return 2
    s = fuzz(args.cases, None if args.minutes is None else args.minutes * 60, args.seed)
    return report(s, args.seed, "kind, input kind and message start", SLOW_S, PEAK_MIB)


if __name__ == "__main__":
    sys.exit(main())
