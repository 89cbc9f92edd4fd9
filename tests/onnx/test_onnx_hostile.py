"""vera_onnx against hostile input (issue 23, findings 10-12): `.onnx_adapter` files read once and bounded
by the model before they are read (trailing bytes refused), hot-swap adapters served from the bytes that
were checked even when the file is replaced meanwhile, out-of-range adapter indices refused by the multi
graph itself (plain ONNX Runtime, no Python session), malformed ``adapter_ids`` refused with OnnxError.

The race can be run at scale: ``python tests/onnx/test_onnx_hostile.py --race 100000``."""
import os
import re
import sys
import threading
import time
import tracemalloc

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from torch import nn  # noqa: E402

import vera_ref  # noqa: E402
from vera_onnx import OnnxAdapterError, VeraOnnxSession, export, onnx_adapter, read_parameters  # noqa: E402
from vera_onnx import adapter_file, serving, torch_export  # noqa: E402
from vera_onnx.errors import OnnxError  # noqa: E402
from vera_ref import ModuleSpec, new_adapter  # noqa: E402
from vera_torch import VeraConfig, get_vera_model  # noqa: E402

SEED, R, K = 4, 3, 2
MODS = [ModuleSpec("0", 6, 3), ModuleSpec("2", 3, 5)]
X = np.linspace(-2, 2, 18, dtype=np.float32).reshape(3, 6)


def _adapter(values=1):
    ad = new_adapter(MODS, R, seed=SEED)
    rng = np.random.default_rng(values)
    for m in ad.config.modules:
        ad.lambda_d[m.name][:] = rng.uniform(-1, 1, R)
        ad.lambda_b[m.name][:] = rng.uniform(-1, 1, m.out_features)
    return ad


def _write(path, params):
    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(1)
    fmt.set_model_version(1)
    fmt.set_parameters({k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v)) for k, v in params.items()})
    fmt.export_adapter(str(path))


def _models(d):
    torch.manual_seed(0)
    m = get_vera_model(nn.Sequential(nn.Linear(6, 3), nn.ReLU(), nn.Linear(3, 5)),
                       VeraConfig(r=R, target_modules=["0", "2"], seed=SEED)).eval()
    x = torch.randn(2, 6)
    export(m, (x,), d / "hotswap.onnx", mode="hotswap", input_names=["x"])
    export(m, (x,), d / "multi.onnx", mode="multi", capacity=K, input_names=["x"])
    vera_ref.save_adapter(_adapter(), d / "a.safetensors")
    onnx_adapter(d / "a.safetensors", d / "hotswap.onnx", d / "good.onnx_adapter")
    good = read_parameters(d / "good.onnx_adapter", d / "hotswap.onnx")
    _write(d / "nan.onnx_adapter", {**good, "2.lambda_b": np.full(5, np.nan, np.float32)})
    return d


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return _models(tmp_path_factory.mktemp("hostile"))


# -- finding 10: bounded, no trailing bytes ------------------------------------------------------------------

def test_trailing_bytes_are_refused(files, tmp_path):
    d = files
    data = (d / "good.onnx_adapter").read_bytes()
    sess = VeraOnnxSession(d / "hotswap.onnx")
    for i, tail in enumerate([b"\x01", b"\x00" * 8, b"\x00\x00\x00\x07", b"x" * 30]):
        p = tmp_path / f"t{i}.onnx_adapter"
        p.write_bytes(data + tail)
        with pytest.raises(OnnxAdapterError, match=rf"^file: {re.escape(str(p))} has \d+ bytes after the adapter's "
                                                  r"data; refused$"):
            sess.load_adapter("a", p)
        with pytest.raises(OnnxAdapterError, match=r"bytes after the adapter's data; refused$"):
            read_parameters(p, d / "hotswap.onnx")
    assert sess.loaded == []
    p = tmp_path / "ok.onnx_adapter"
    p.write_bytes(data)
    sess.load_adapter("a", p)  # the same bytes without the tail load
    assert sess.loaded == ["a"]


@pytest.mark.parametrize("model", ["hotswap.onnx", "multi.onnx"])
def test_a_huge_file_is_refused_by_its_size_before_it_is_read(files, tmp_path, model):
    d = files
    p = tmp_path / "huge.onnx_adapter"
    data = (d / "good.onnx_adapter").read_bytes()
    with open(p, "wb") as f:
        f.write(data)
        f.truncate(2 << 30)  # a valid file followed by 2 GiB of zeros (sparse: no disk used)
    sess = VeraOnnxSession(d / model)
    bound = adapter_file.size_bound(sess._shapes)
    assert len(data) <= bound < 4096  # the bound is what the model needs, not a generic cap
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(OnnxAdapterError, match=rf"^file: {re.escape(str(p))} is 2147483648 bytes; an adapter for "
                                              rf"this model is at most {bound} bytes$"):
        sess.load_adapter("a", p)
    elapsed = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 << 20, peak  # nothing of the file was read
    assert elapsed < 1.0
    assert sess.loaded == []


def test_the_size_bound_holds_every_file_the_writer_makes(files):
    d = files
    for model in ("hotswap.onnx", "multi.onnx"):
        sess = VeraOnnxSession(d / model)
        bound = adapter_file.size_bound(sess._shapes)
        full = {k: np.ones(shape, dt) for k, (dt, shape) in sess._shapes.items()}  # every parameter the model has
        p = d / f"full-{model}.onnx_adapter"
        _write(p, full)
        assert os.path.getsize(p) <= bound
        assert sorted(adapter_file.parse(p.read_bytes())) == sorted(full)


def test_a_repeated_parameter_name_is_refused(files, tmp_path):
    d = files
    data = (d / "good.onnx_adapter").read_bytes()
    assert data.count(b"2.lambda_b") == 1 and data.count(b"0.lambda_b") == 1
    p = tmp_path / "dup.onnx_adapter"
    p.write_bytes(data.replace(b"2.lambda_b", b"0.lambda_b"))  # the same length: only the name changes
    with pytest.raises(OnnxAdapterError, match=r"not an ONNX Runtime adapter file \(parameter '0\.lambda_b' is "
                                              r"given twice\)$"):
        VeraOnnxSession(d / "hotswap.onnx").load_adapter("a", p)


def test_truncated_and_corrupted_files_are_refused_with_one_error_type(files, tmp_path):
    d = files
    data = (d / "good.onnx_adapter").read_bytes()
    sess = VeraOnnxSession(d / "multi.onnx")
    rng = np.random.default_rng(0)
    p = tmp_path / "c.onnx_adapter"
    outcomes = set()
    for i in range(300):
        b = bytearray(data[: rng.integers(0, len(data))] if i % 3 == 0 else data)
        if i % 3:
            for at in rng.integers(0, len(b), size=int(rng.integers(1, 4))):
                b[at] = int(rng.integers(0, 256))
        p.write_bytes(bytes(b))
        try:
            sess.load_adapter("c", p, replace=True)
            outcomes.add("loaded")
        except OnnxAdapterError:
            outcomes.add("refused")
    assert "refused" in outcomes


# -- finding 11: hot-swap serves what was checked ---------------------------------------------------------------

def test_the_served_adapter_is_the_checked_one_when_the_path_is_replaced_after_the_read(files, tmp_path,
                                                                                       monkeypatch):
    d = files
    path = tmp_path / "live.onnx_adapter"
    path.write_bytes((d / "good.onnx_adapter").read_bytes())
    real = serving.read_adapter_bytes

    def read_then_swap(p, shapes):  # the worst moment: right after the checked read
        out = real(p, shapes)
        os.replace(_copy(d / "nan.onnx_adapter", tmp_path / "swap.tmp"), path)
        return out
    monkeypatch.setattr(serving, "read_adapter_bytes", read_then_swap)
    sess = VeraOnnxSession(d / "hotswap.onnx")
    sess.load_adapter("a", path)
    out = sess.run(None, {"x": X}, adapter="a")[0]
    assert np.isfinite(out).all()
    monkeypatch.setattr(serving, "read_adapter_bytes", real)
    ref = VeraOnnxSession(d / "hotswap.onnx")
    ref.load_adapter("a", d / "good.onnx_adapter")
    assert np.array_equal(out, ref.run(None, {"x": X}, adapter="a")[0])
    with pytest.raises(OnnxAdapterError, match=r"contains non-finite values"):
        sess.load_adapter("b", path)  # the file now at the path is the NaN one, and it is refused


def _copy(src, dst):
    dst.write_bytes(src.read_bytes())
    return dst


def race(d, loads: int, model: str = "hotswap.onnx") -> dict[str, int]:
    """Load ``path`` ``loads`` times while a thread atomically replaces it (os.replace) with the good or the
    NaN file in turn; after each accepted load run the model. Returns the counts of accepted, refused and
    NaN-serving loads."""
    path = d / f"race-{model}.onnx_adapter"
    sources = [(d / "good.onnx_adapter").read_bytes(), (d / "nan.onnx_adapter").read_bytes()]
    staged = []
    for i, data in enumerate(sources):
        s = d / f"race-{model}-{i}.src"
        s.write_bytes(data)
        staged.append(s)
    os.link(staged[0], path) if not path.exists() else None
    stop = threading.Event()

    def swapper():
        i = 0
        while not stop.is_set():
            tmp = d / f"race-{model}.tmp"
            if tmp.exists():
                tmp.unlink()
            os.link(staged[i % 2], tmp)
            os.replace(tmp, path)
            i += 1
    sess = VeraOnnxSession(d / model)
    counts = {"accepted": 0, "refused": 0, "nan_served": 0}
    t = threading.Thread(target=swapper, daemon=True)
    t.start()
    try:
        for _ in range(loads):
            try:
                sess.load_adapter("a", path, replace=True)
            except OnnxAdapterError:
                counts["refused"] += 1
                continue
            counts["accepted"] += 1
            if not np.isfinite(sess.run(None, {"x": X}, adapter="a")[0]).all():
                counts["nan_served"] += 1
    finally:
        stop.set()
        t.join()
    return counts


@pytest.mark.parametrize("model", ["hotswap.onnx", "multi.onnx"])
def test_hot_swap_race_serves_no_nan(files, model):
    counts = race(files, 2000 if model == "hotswap.onnx" else 1000, model)
    assert counts["nan_served"] == 0, counts
    assert counts["accepted"] > 0 and counts["refused"] > 0, counts  # the race did alternate the files


def test_replacing_and_removing_adapters_keeps_no_private_files(files):
    d = files
    sess = VeraOnnxSession(d / "hotswap.onnx")
    for _ in range(3):
        sess.load_adapter("a", d / "good.onnx_adapter", replace=True)
        sess.load_adapter("b", d / "a.safetensors", replace=True)
    assert len(os.listdir(sess._tmp.name)) == 2
    with pytest.raises(OnnxAdapterError):
        sess.load_adapter("c", d / "nan.onnx_adapter")
    assert len(os.listdir(sess._tmp.name)) == 2  # a refused load leaves nothing behind
    sess.remove_adapter("a")
    sess.remove_adapter("b")
    assert os.listdir(sess._tmp.name) == []


def test_the_session_serves_the_model_it_described_when_the_path_is_replaced(files, tmp_path, monkeypatch):
    d = files
    path = tmp_path / "model.onnx"
    path.write_bytes((d / "hotswap.onnx").read_bytes())
    real = serving.describe

    def describe_then_swap(model):  # between the description and the session: the model file is replaced
        out = real(model)
        os.replace(_copy(d / "multi.onnx", tmp_path / "m.tmp"), path)
        return out
    monkeypatch.setattr(serving, "describe", describe_then_swap)
    sess = VeraOnnxSession(path)
    assert sess.mode == "hotswap"
    assert "adapter_index" not in [i.name for i in sess.session.get_inputs()]  # the hot-swap graph, read once
    sess.load_adapter("a", d / "good.onnx_adapter")
    assert np.isfinite(sess.run(None, {"x": X}, adapter="a")[0]).all()


# -- finding 12: adapter indices -----------------------------------------------------------------------------

def _plain(path):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def test_plain_onnx_runtime_refuses_out_of_range_adapter_indices(files):
    d = files
    plain = _plain(d / "multi.onnx")
    sess = VeraOnnxSession(d / "multi.onnx")
    sess.load_adapter("a", d / "a.safetensors")  # slot 1
    ok = plain.run(None, {"x": X, "adapter_index": np.array([0, 1, K], np.int64)})[0]
    # plain ORT feeds the tables' defaults: every row the base model's
    assert np.array_equal(ok, sess.run(None, {"x": X}, adapter_ids=[None, None, None])[0])
    for bad in (-1, -K, -(K + 1), K + 1, 2 ** 40, -(2 ** 62)):
        with pytest.raises(Exception, match="out of (data )?bounds|out of range|must be within"):
            plain.run(None, {"x": X, "adapter_index": np.array([0, bad, 1], np.int64)})


def test_valid_indices_still_select_their_rows(files):
    d = files
    sess = VeraOnnxSession(d / "multi.onnx")
    sess.load_adapter("a", d / "a.safetensors")
    mixed = sess.run(None, {"x": X}, adapter_ids=["a", None, "a"])[0]
    alone_a = sess.run(None, {"x": X}, adapter="a")[0]
    alone_base = sess.run(None, {"x": X}, adapter_ids=[None, None, None])[0]
    assert np.array_equal(mixed[[0, 2]], alone_a[[0, 2]]) and np.array_equal(mixed[1], alone_base[1])
    assert not np.array_equal(alone_a, alone_base)


def test_an_out_of_range_index_poisons_its_row_where_a_gather_does_not_check():
    idx = torch_export._Index()
    idx.rows = K + 1
    idx.set(torch.tensor([0, -1, K, K + 1, -(K + 1)]))
    assert idx.value.tolist() == [0, K + 1, K, K + 1, K + 1]  # never wrapped to another row
    assert idx.bad.tolist() == [False, True, False, True, True]
    rows = torch_export._poison(torch.zeros(5, 2), idx)
    assert torch.isnan(rows).tolist() == [[False] * 2, [True] * 2, [False] * 2, [True] * 2, [True] * 2]


@pytest.mark.parametrize("model", ["hotswap.onnx", "multi.onnx"])
def test_malformed_adapter_ids_raise_onnx_error(files, model):
    d = files
    sess = VeraOnnxSession(d / model)
    sess.load_adapter("a", d / "a.safetensors")
    for ids, msg in (([["a"], None, None], r"^adapter_ids\[0\]: adapter names are strings or None, got a list$"),
                     ((n for n in ["a", "a", "a"]), r"^adapter_ids is a list with one adapter name \(or None\) per "
                                                    r"row, got a generator$"),
                     ([1, None, None], r"^adapter_ids\[0\]: adapter names are strings or None, got a int$"),
                     ({"a": 1}, r"^adapter_ids is a list .* got a dict$"),
                     ("aaa", r"^adapter_ids is a list .* got a string$")):
        with pytest.raises(OnnxError, match=msg):
            sess.run(None, {"x": X}, adapter_ids=ids)
    for bad in (5, None, b"a.onnx_adapter"):
        with pytest.raises(OnnxAdapterError, match=r"^path: expected a file path or a vera_ref\.Adapter, got "):
            sess.load_adapter("b", bad)
    if model == "hotswap.onnx":
        for adapter in ([["a"]], 5):
            with pytest.raises(OnnxError):
                sess.run(None, {"x": X}, adapter=adapter)


if __name__ == "__main__":  # the race at scale: python tests/onnx/test_onnx_hostile.py --race 100000
    import argparse
    import tempfile
    from pathlib import Path
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--race", type=int, default=100000, help="loads per model (default 100000)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = _models(Path(tmp))
        for model in ("hotswap.onnx", "multi.onnx"):
            t0 = time.perf_counter()
            c = race(d, args.race, model)
            print(f"{model}: {args.race} loads in {time.perf_counter() - t0:.1f} s: {c}")
            if c["nan_served"]:
                sys.exit(1)
