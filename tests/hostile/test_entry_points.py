"""Every public entry point against hostile input (issue 23, "Closing the classes"): the README table
"Errors and costs of every entry point" names each entry point's one error type on bad input and its
worst-case cost; this file walks that table.

For each (entry point, hostile input) row: the exception raised is exactly the documented type (or a
subclass), and the cost stays under the row's bound, measured deterministically, never by wall time:
  - bytes read, counted by wrapping the file object the reader opens (vera_ref.container.open_regular)
    or handed to it (read_adapter), bounded by the bytes actually written to the hostile file (its
    sparse holes excluded) plus the 8-byte length prefix;
  - tracemalloc peak of Python allocations (NumPy's included), bounded by 8x those bytes + 8 MiB.
A 2 GB sparse file whose header lies thus fails its row if anything reads or allocates the hole.
Torch, ONNX and JAX rows skip when their packages are missing."""
import json
import os
import re
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import vera_ref
from conftest import ROOT
from vera_ref import ModuleSpec, container, new_adapter
from vera_ref.adapter import read_adapter, tensor_plan
from vera_ref.errors import AdapterFileError, ConversionError, VeraError
from vera_ref.peft_interop import MAX_DIMS_BYTES, adapter_to_peft, peft_to_adapter, read_dims

SEED, R = 4, 3
MODS = [ModuleSpec("0", 6, 3), ModuleSpec("2", 3, 5)]
GIB2 = 1 << 31  # the sparse hole: 2 GB that cost nothing to make and must cost nothing to refuse
MIB = 1 << 20


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


# -- cost measurement ---------------------------------------------------------------------------
class Counting:
    """A file object that counts the bytes read through it."""

    def __init__(self, f, box):
        self._f, self._box = f, box

    def read(self, n=-1):
        b = self._f.read(n)
        self._box[0] += len(b)
        return b

    def readinto(self, buf):
        k = self._f.readinto(buf)
        self._box[0] += k or 0
        return k

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def __getattr__(self, name):
        return getattr(self._f, name)


def _run(fn, monkeypatch):
    """fn() under tracemalloc with vera_ref's reader counting bytes: (exception, peak bytes, bytes read)."""
    box = [0]
    opener = container.open_regular
    monkeypatch.setattr(container, "open_regular", lambda p: Counting(opener(p), box))
    tracemalloc.start()
    try:
        fn()
        exc = None
    except BaseException as e:  # noqa: BLE001 - the type is the thing under test
        exc = e
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return exc, peak, box[0]


def _check(exc, peak, read, written, expected, *, count_reads=True, fixed=0):
    assert exc is not None, "accepted a hostile input"
    assert isinstance(exc, expected), f"raised {type(exc).__name__}: {exc}, documented: {expected.__name__}"
    mem_bound = 8 * written + 8 * MIB + fixed
    assert peak <= mem_bound, f"tracemalloc peak {peak} > bound {mem_bound}"
    if count_reads:
        assert read <= written + 8, f"read {read} bytes of a file with {written} bytes written"


def _cli(argv, capsys):
    from vera_ref.cli import main
    rc = main([os.fspath(a) for a in argv])
    err = capsys.readouterr().err
    return rc, err


class CliRefusal(Exception):
    """What a CLI row expects: exit 1 and one line on stderr (raised by _cli_row below)."""


def _cli_row(argv, capsys):
    rc, err = _cli(argv, capsys)
    lines = err.strip().splitlines()
    if rc == 1 and len(lines) == 1 and "Traceback" not in err:
        raise CliRefusal(lines[0])
    raise AssertionError(f"exit {rc}, stderr {err!r}")


# -- the tiny models -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def torch_model():
    torch = pytest.importorskip("torch")
    from torch import nn

    from vera_torch import VeraConfig, get_vera_model
    torch.manual_seed(0)
    return get_vera_model(nn.Sequential(nn.Linear(6, 3), nn.ReLU(), nn.Linear(3, 5)),
                          VeraConfig(r=R, target_modules=["0", "2"], seed=SEED)).eval()


@pytest.fixture(scope="module")
def onnx_setup(torch_model, tmp_path_factory):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import torch

    from vera_onnx import VeraOnnxSession, export, onnx_adapter
    d = tmp_path_factory.mktemp("onnx")
    export(torch_model, (torch.randn(2, 6),), d / "hotswap.onnx", mode="hotswap", input_names=["x"])
    vera_ref.save_adapter(new_adapter(MODS, R, seed=SEED), d / "a.safetensors")
    onnx_adapter(d / "a.safetensors", d / "hotswap.onnx", d / "good.onnx_adapter")
    return d, VeraOnnxSession(d / "hotswap.onnx")


@pytest.fixture(scope="module")
def jax_model():
    pytest.importorskip("jax")
    nnx = pytest.importorskip("flax.nnx")
    from vera_jax.nnx import apply_vera

    class M(nnx.Module):
        def __init__(self, rngs):
            self.fc = nnx.Linear(6, 3, rngs=rngs)

    m = M(nnx.Rngs(0))
    apply_vera(m, ["fc"], r=R, seed=SEED)
    return m


# -- the table: entry point -> (documented error type, hostile inputs, call) -------------------------
def _load_adapter(p, req):
    vera_ref.load_adapter(p)


def _validate_adapter(p, req):
    vera_ref.validate_adapter(p)


def _read_adapter(p, req):
    box = req.node.read_box
    with open(p, "rb") as f:
        read_adapter(Counting(f, box), os.fstat(f.fileno()).st_size)


def _cli_validate(p, req):
    _cli_row(["validate", p], req.getfixturevalue("capsys"))


def _cli_inspect(p, req):
    _cli_row(["inspect", p], req.getfixturevalue("capsys"))


def _cli_to_peft(p, req):
    _cli_row(["convert", "--to-peft", p, "--out", req.getfixturevalue("tmp_path") / "out_peft"],
             req.getfixturevalue("capsys"))


def _jax_read_adapter(p, req):
    pytest.importorskip("jax")
    import vera_jax
    vera_jax.read_adapter(p)


def _jax_nnx_load_adapter(p, req):
    from vera_jax.nnx import load_adapter
    load_adapter(req.getfixturevalue("jax_model"), p)


def _torch_load_adapter(p, req):
    req.getfixturevalue("torch_model").load_adapter(p, name="hostile")


def _torch_from_adapter(p, req):
    import torch
    from torch import nn

    from vera_torch import VeraModel
    torch.manual_seed(0)
    VeraModel.from_adapter(nn.Sequential(nn.Linear(6, 3), nn.ReLU(), nn.Linear(3, 5)), p)


def _onnx_load_safetensors(p, req):
    _, sess = req.getfixturevalue("onnx_setup")
    sess.load_adapter("hostile", p, replace=True)


def _peft_to_adapter(p, req):
    peft_to_adapter(p, in_features=4)


def _cli_from_peft(p, req):
    _cli_row(["convert", "--from-peft", p, "--in-features", "4", "--out",
              req.getfixturevalue("tmp_path") / "o.safetensors"], req.getfixturevalue("capsys"))


def _torch_from_peft(p, req):
    pytest.importorskip("torch")
    from torch import nn

    from vera_torch import VeraModel

    class Enc(nn.Module):
        def __init__(self):
            super().__init__()
            self.q = nn.Linear(4, 3)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = Enc()
            setattr(self, A29, nn.Linear(4, 3))

    VeraModel.from_peft(Net(), p)


def _adapter_to_peft(p, req):
    ad, modules = p
    adapter_to_peft(ad, req.getfixturevalue("tmp_path") / "out_peft", model_modules=modules)


def _torch_get_vera_model(p, req):
    from torch import nn

    from vera_torch import VeraConfig, get_vera_model
    net = nn.Module()
    setattr(net, A29, nn.Linear(4, 3))
    net.q = nn.Linear(4, 3)
    get_vera_model(net, VeraConfig(**p))


def _read_dims(p, req):
    read_dims(p)


def _cli_dims(p, req):
    pd, _ = _peft(req.getfixturevalue("tmp_path"), json.dumps(PEFT_GOOD))
    _cli_row(["convert", "--from-peft", pd, "--dims", p, "--out", req.getfixturevalue("tmp_path") / "o.safetensors"],
             req.getfixturevalue("capsys"))


def _onnx_read_parameters(p, req):
    from vera_onnx import read_parameters
    d, _ = req.getfixturevalue("onnx_setup")
    read_parameters(p, d / "hotswap.onnx")


def _onnx_load_onnx_adapter(p, req):
    _, sess = req.getfixturevalue("onnx_setup")
    sess.load_adapter("hostile", p, replace=True)


def _onnx_errors():
    pytest.importorskip("onnxruntime")
    from vera_onnx import OnnxAdapterError
    from vera_onnx.errors import OnnxError
    return OnnxAdapterError, OnnxError


def _config_error():
    pytest.importorskip("torch")
    from vera_torch.errors import ConfigError
    return ConfigError


def _torch_errors():
    pytest.importorskip("torch")
    from vera_torch.errors import ConfigError  # noqa: F401 - the package's error module imports
    return AdapterFileError


# entry point (as named in the README table) -> (error type or a callable giving it, kind of input, call)
ENTRY_POINTS = {
    "vera_ref.load_adapter": (AdapterFileError, "adapter", _load_adapter),
    "vera_ref.validate_adapter": (AdapterFileError, "adapter", _validate_adapter),
    "vera_ref.adapter.read_adapter": (AdapterFileError, "stream", _read_adapter),
    "vera-ref validate": (CliRefusal, "adapter", _cli_validate),
    "vera-ref inspect": (CliRefusal, "adapter", _cli_inspect),
    "vera-ref convert --to-peft": (CliRefusal, "adapter", _cli_to_peft),
    "vera_jax.read_adapter": (AdapterFileError, "adapter", _jax_read_adapter),
    "vera_jax.nnx.load_adapter": (AdapterFileError, "adapter", _jax_nnx_load_adapter),
    "vera_torch.VeraModel.load_adapter": (_torch_errors, "adapter", _torch_load_adapter),
    "vera_torch.VeraModel.from_adapter": (_torch_errors, "adapter", _torch_from_adapter),
    "vera_onnx.VeraOnnxSession.load_adapter (.safetensors)": (AdapterFileError, "adapter", _onnx_load_safetensors),
    "vera_ref.peft_interop.peft_to_adapter": (ConversionError, "peft", _peft_to_adapter),
    "vera-ref convert --from-peft": (CliRefusal, "peft", _cli_from_peft),
    "vera_torch.VeraModel.from_peft": (ConversionError, "peft", _torch_from_peft),
    "vera_ref.peft_interop.adapter_to_peft": (ConversionError, "memory_adapter", _adapter_to_peft),
    "vera_torch.get_vera_model": (_config_error, "torch_config", _torch_get_vera_model),
    "vera_ref.peft_interop.read_dims": (ConversionError, "dims", _read_dims),
    "vera-ref convert --dims": (CliRefusal, "dims", _cli_dims),
    "vera_onnx.read_parameters": (lambda: _onnx_errors()[0], "onnx_adapter", _onnx_read_parameters),
    "vera_onnx.VeraOnnxSession.load_adapter (.onnx_adapter)": (lambda: _onnx_errors()[1], "onnx_adapter",
                                                               _onnx_load_onnx_adapter),
}
INPUTS = {"adapter": ADAPTER_FILES, "stream": STREAM_FILES, "peft": PEFT_DIRS, "dims": DIMS_FILES,
          "onnx_adapter": ONNX_ADAPTER_FILES, "memory_adapter": MEMORY_ADAPTERS, "torch_config": TORCH_CONFIGS}
# (entry point, input) -> a bug found here (not fixed by this file), with the line that shows it
XFAIL: dict[tuple[str, str], str] = {
    ("vera_ref.peft_interop.peft_to_adapter", "p_nan_weights"):
        "bug: a PEFT checkpoint whose vera_lambda_d holds NaN is accepted: peft_to_adapter returns an Adapter with "
        "lambda_d [nan, nan] and raises nothing (a spec adapter must be finite, E4.6.25.1)",
    ("vera_ref.peft_interop.adapter_to_peft", "m_nan_vector"):
        "bug: an in-memory Adapter whose lambda_d holds NaN is written as a PEFT checkpoint; adapter_to_peft "
        "raises nothing (save_adapter refuses the same adapter)",
    ("vera_torch.VeraModel.from_peft", "p_nan_weights"):
        "bug: raises AdapterFileError, not ConversionError: backends/vera_torch/model.py line 630, in _vector: "
        "raise AdapterFileError(field, 'contains non-finite values (NaN or infinity)') (via load_adapter line 510)",
}

ROWS = [pytest.param(ep, make, id=f"{ep}|{make.__name__}",
                     marks=[pytest.mark.xfail(strict=True, reason=XFAIL[(ep, make.__name__)])]
                     if (ep, make.__name__) in XFAIL else [])
        for ep, (_, kind, _) in ENTRY_POINTS.items() for make in INPUTS[kind]]


@pytest.mark.parametrize("entry, make", ROWS)
def test_entry_point_on_hostile_input(entry, make, tmp_path, request, monkeypatch):
    expected, kind, call = ENTRY_POINTS[entry]
    if not isinstance(expected, type):
        expected = expected()
    for fixture in {"vera_jax": ["jax_model"], "vera_torch": ["torch_model"], "vera_onnx": ["onnx_setup"]}.get(
            entry.split(".")[0], []):
        request.getfixturevalue(fixture)  # skip before measuring when the package is missing
    if entry.startswith("vera_jax"):
        pytest.importorskip("flax.nnx")
    if kind == "onnx_adapter":
        d, _ = request.getfixturevalue("onnx_setup")
        path, written = make(tmp_path, d / "good.onnx_adapter")
    else:
        path, written = make(tmp_path)
    request.node.read_box = box = [0]
    exc, peak, read = _run(lambda: call(path, request), monkeypatch)
    # the ONNX adapter reader, read_dims and the PEFT config reader open files themselves: memory only
    counted = kind in ("adapter", "stream") and "onnx" not in entry
    # read_dims reads into one buffer of its documented limit (MAX_DIMS_BYTES + 1) whatever the file's size
    fixed = MAX_DIMS_BYTES + 1 if kind == "dims" else 0
    _check(exc, peak, read + box[0], written, expected, count_reads=counted, fixed=fixed)
    if isinstance(exc, AdapterFileError):
        assert re.fullmatch(r"E4\.6\.\d+\.\d+", exc.code or ""), exc.code
    if not isinstance(exc, CliRefusal):
        assert isinstance(exc, VeraError)


# -- the README table and this file's table name the same entry points --------------------------------
def _readme_rows() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"^## Errors and costs of every entry point\n(.*?)^## ", text, re.S | re.M)
    assert m, "README has no section '## Errors and costs of every entry point'"
    rows = [ln for ln in m.group(1).splitlines() if ln.startswith("| `")]
    return [re.match(r"\| `([^`]+)`", ln).group(1) for ln in rows]


def test_readme_table_matches_this_table():
    rows = _readme_rows()
    assert len(rows) == len(set(rows)), "an entry point listed twice in the README table"
    assert sorted(rows) == sorted(ENTRY_POINTS)
