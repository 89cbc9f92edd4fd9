"""Hostile inputs for tests/hostile/test_entry_points.py, one builder per input: each takes a folder and
returns (the input, the bytes really written to disk, sparse holes excluded)."""
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

import vera_ref
from vera_ref import ModuleSpec, container, new_adapter

SEED, R = 4, 3
MODS = [ModuleSpec("0", 6, 3), ModuleSpec("2", 3, 5)]
GIB2 = 1 << 31  # the sparse hole: 2 GB that cost nothing to make and must cost nothing to refuse

# -- hostile adapter files: each returns (path, bytes really written) ---------------------------
def _good(d: Path) -> Path:
    p = d / "good.safetensors"
    vera_ref.save_adapter(new_adapter(MODS, R, seed=SEED), p)
    return p


def _split(payload: bytes) -> tuple[dict, bytes]:
    n = int.from_bytes(payload[:8], "little")
    return json.loads(payload[8:8 + n]), payload[8 + n:]


def _join(header: dict | bytes, data: bytes) -> bytes:
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def _put(d: Path, name: str, payload: bytes, sparse_to: int = 0) -> tuple[Path, int]:
    p = d / name
    with open(p, "wb") as f:
        f.write(payload)
        if sparse_to:
            f.truncate(sparse_to)  # a hole: no block is written
    return p, len(payload)


def f_truncated(d):
    payload = _good(d).read_bytes()
    return _put(d, "trunc.safetensors", payload[:-5])


def f_length_lie(d):  # the 8-byte header length claims the whole 2 GB hole
    return _put(d, "lie.safetensors", struct.pack("<Q", GIB2 - 8) + b'{"__metadata__":', GIB2)


def f_offsets_lie(d):  # a valid header listing one more tensor of 2 GB lying in the sparse hole
    header, data = _split(_good(d).read_bytes())
    header["junk"] = {"dtype": "U8", "shape": [GIB2], "data_offsets": [len(data), len(data) + GIB2]}
    payload = _join(header, data)
    return _put(d, "offsets.safetensors", payload, len(payload) + GIB2)


def f_nan(d):
    header, data = _split(_good(d).read_bytes())
    name = next(k for k in sorted(header) if "lambda_d" in k)
    e = header[name]
    assert e["dtype"] == "F32", e
    b0, b1 = e["data_offsets"]
    data = data[:b0] + np.full((b1 - b0) // 4, np.nan, "<f4").tobytes() + data[b1:]
    return _put(d, "nan.safetensors", _join(header, data))


def f_deep(d):
    return _put(d, "deep.safetensors", _join(b'{"__metadata__":' + b"[" * 100_000 + b"]" * 100_000 + b"}", b""))


def f_escaped(d):  # structure inside one string: a counter that ignores escapes sees 1.5 M brackets
    return _put(d, "escaped.safetensors", _join(b'{"__metadata__":{"x":"' + b'\\"[{' * 500_000 + b'"}}', b""))


def f_surrogate(d):
    header, data = _split(_good(d).read_bytes())
    text = json.dumps(header).replace('"__metadata__": {', '"__metadata__": {"x": "\\ud800", ', 1)
    return _put(d, "surrogate.safetensors", _join(text.encode(), data))


def f_folder(d):
    p = d / "folder.safetensors"
    p.mkdir()
    return p, 0


def f_fifo(d):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this system")
    p = d / "fifo.safetensors"
    os.mkfifo(p)
    return p, 0


ADAPTER_FILES = [f_truncated, f_length_lie, f_offsets_lie, f_nan, f_deep, f_escaped, f_surrogate, f_folder, f_fifo]
STREAM_FILES = [f for f in ADAPTER_FILES if f not in (f_folder, f_fifo)]  # read_adapter takes an open file


# -- hostile PEFT checkpoints and --dims files ----------------------------------------------------
PEFT_GOOD = {"peft_type": "VERA", "r": 2, "target_modules": ["q"], "projection_prng_key": 0,
             "save_projection": False, "bias": "none"}
A29 = "a" * 28 + "!"


def _peft(d: Path, config: str | None, names=("enc.q",), weights: str = "ok") -> tuple[Path, int]:
    d = d / "peft"
    d.mkdir()
    n = 0
    if config is not None:
        (d / "adapter_config.json").write_text(config, encoding="utf-8", errors="surrogatepass")
        n += len(config.encode("utf-8", "surrogatepass"))
    tensors = {}
    for m in names:
        tensors[f"base_model.model.{m}.vera_lambda_d"] = (np.ones(2, np.float32), "F32")
        tensors[f"base_model.model.{m}.vera_lambda_b"] = (np.ones(3, np.float32), "F32")
    if weights == "nan":
        tensors[f"base_model.model.{names[0]}.vera_lambda_d"] = (np.full(2, np.nan, np.float32), "F32")
    w = d / "adapter_model.safetensors"
    if weights == "folder":
        w.mkdir()
    else:
        payload = container.to_bytes({"format": "pt"}, tensors)
        if weights == "truncated":
            payload = payload[:-3]
        w.write_bytes(payload)
        n += len(payload)
    return d, n


def p_deep(d):
    return _peft(d, json.dumps(PEFT_GOOD)[:-1] + ', "target_modules": ' + "[" * 100_000 + "]" * 100_000 + "}")


def p_regex_bomb(d):
    return _peft(d, json.dumps({**PEFT_GOOD, "target_modules": r"(a|aa)+$"}), names=(A29,))


def p_surrogate(d):
    return _peft(d, json.dumps(PEFT_GOOD)[:-1] + ', "x": "\\ud800"}')


def p_sparse_config(d):
    pd, n = _peft(d, None)
    with open(pd / "adapter_config.json", "wb") as f:
        f.write(b'{"peft_type": "VERA", "x": "')
        f.truncate(GIB2)
    return pd, n + 28


def p_nan_weights(d):
    return _peft(d, json.dumps(PEFT_GOOD), weights="nan")


def p_truncated_weights(d):
    return _peft(d, json.dumps(PEFT_GOOD), weights="truncated")


def p_folder_weights(d):
    return _peft(d, json.dumps(PEFT_GOOD), weights="folder")


def p_fifo_config(d):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this system")
    pd, n = _peft(d, None)
    os.mkfifo(pd / "adapter_config.json")
    return pd, n


PEFT_DIRS = [p_deep, p_regex_bomb, p_surrogate, p_sparse_config, p_nan_weights, p_truncated_weights,
             p_folder_weights, p_fifo_config]


def _dims(d, text: str | None, sparse_to: int = 0):
    p = d / "dims.json"
    if text is None:
        p.mkdir()
        return p, 0
    return _put(d, "dims.json", text.encode("utf-8", "surrogatepass"), sparse_to)


def d_deep(d):
    return _dims(d, '{"enc.q": ' + "[" * 100_000 + "]" * 100_000 + "}")


def d_nan(d):
    return _dims(d, '{"enc.q": [NaN, 3]}')


def d_huge_int(d):
    return _dims(d, '{"enc.q": [' + "9" * 400 + ", 3]}")


def d_surrogate(d):
    return _dims(d, '{"\\ud800": [4, 3]}')


def d_sparse(d):
    return _dims(d, '{"enc.q": [4, 3], "x": "', GIB2)


def d_folder(d):
    return _dims(d, None)


def d_fifo(d):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this system")
    p = d / "dims.json"
    os.mkfifo(p)
    return p, 0


DIMS_FILES = [d_deep, d_nan, d_huge_int, d_surrogate, d_sparse, d_folder, d_fifo]


# -- hostile .onnx_adapter files (against the tiny hot-swap model below) --------------------------
def o_trailing(d, good: Path):
    return _put(d, "trail.onnx_adapter", good.read_bytes() + b"\0" * 64)


def o_truncated(d, good: Path):
    return _put(d, "trunc.onnx_adapter", good.read_bytes()[:-9])


def o_sparse(d, good: Path):
    return _put(d, "sparse.onnx_adapter", good.read_bytes(), GIB2)


def o_garbage(d, good: Path):
    return _put(d, "garbage.onnx_adapter", b"\xff" * 4096)


def o_folder(d, good: Path):
    p = d / "folder.onnx_adapter"
    p.mkdir()
    return p, 0


def o_fifo(d, good: Path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this system")
    p = d / "fifo.onnx_adapter"
    os.mkfifo(p)
    return p, 0


ONNX_ADAPTER_FILES = [o_trailing, o_truncated, o_sparse, o_garbage, o_folder, o_fifo]


# -- hostile in-memory objects and configurations (no file: cost bounded by the constant 8 MiB) ------
def m_nan_vector(d):
    ad = new_adapter([ModuleSpec("enc.q", 4, 3)], 2, seed=0)
    ad.lambda_d["enc.q"][:] = np.nan
    return (ad, None), 0


MEMORY_ADAPTERS = [m_nan_vector]


def c_r_negative(d):
    return {"r": -1, "target_modules": ["q"]}, 0


def c_r_nan(d):
    return {"r": float("nan"), "target_modules": ["q"]}, 0


def c_seed_negative(d):
    return {"r": 2, "target_modules": ["q"], "seed": -1}, 0


def c_regex_bomb(d):
    return {"r": 2, "target_modules": r"(a|aa)+$"}, 0


def c_surrogate(d):
    return {"r": 2, "target_modules": ["\ud800"]}, 0


TORCH_CONFIGS = [c_r_negative, c_r_nan, c_seed_negative, c_regex_bomb, c_surrogate]
