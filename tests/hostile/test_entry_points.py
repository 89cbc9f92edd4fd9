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
import tracemalloc

import pytest

import vera_ref
from conftest import ROOT
from hostile_inputs import (A29, ADAPTER_FILES, DIMS_FILES, MEMORY_ADAPTERS, MODS, ONNX_ADAPTER_FILES, PEFT_DIRS,
                            PEFT_GOOD, R, SEED, STREAM_FILES, TORCH_CONFIGS, _peft)
from vera_ref import container, new_adapter
from vera_ref.adapter import read_adapter
from vera_ref.errors import AdapterFileError, ConversionError, VeraError
from vera_ref.peft_interop import MAX_DIMS_BYTES, adapter_to_peft, peft_to_adapter, read_dims

MIB = 1 << 20


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
XFAIL: dict[tuple[str, str], str] = {}

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
