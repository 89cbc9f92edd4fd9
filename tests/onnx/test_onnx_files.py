"""vera_onnx without torch, .onnx_adapter writes that are atomic under kills and concurrent writers,
and adapter values checked at load (dtype, shape, NaN/Inf)."""
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from conftest import ROOT  # noqa: E402
from vera_onnx import OnnxAdapterError, VeraOnnxSession, export, onnx_adapter, read_parameters  # noqa: E402
from vera_ref.atomic import is_temporary  # noqa: E402
from vera_torch import VeraConfig, get_vera_model  # noqa: E402

BLOCK_TORCH = "import sys; sys.modules['torch'] = None\n"  # any `import torch` now fails
# the bigger run of issue 10: VERA_ONNX_KILLS=100 VERA_ONNX_WRITERS=100 pytest tests/onnx/test_onnx_files.py
KILLS = int(os.environ.get("VERA_ONNX_KILLS", "50"))
WRITERS = int(os.environ.get("VERA_ONNX_WRITERS", "8"))


def _py(code: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd,
                          env=dict(os.environ, PYTHONPATH=str(ROOT / "tests")), timeout=120)


def _model(r=4, dtype=torch.float32):
    torch.manual_seed(0)
    m = get_vera_model(torch.nn.Sequential(torch.nn.Linear(12, 10), torch.nn.ReLU(), torch.nn.Linear(10, 6)),
                       VeraConfig(r=r, target_modules=["0", "2"], seed=7))
    m.add_adapter("b", VeraConfig(r=r, target_modules=["0", "2"], seed=7))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "vera_lambda" in n:
                p.copy_(torch.randn(p.shape, generator=g))
    return m.to(dtype).eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("files")
    m = _model()
    x = torch.randn(3, 12)
    export(m, (x,), d / "hot.onnx", mode="hotswap", input_names=["x"], projections="generator")
    export(m, (x,), d / "multi.onnx", mode="multi", capacity=2, input_names=["x"])
    for n in ("default", "b"):
        m.save_adapter(d / f"{n}.safetensors", n)
    np.save(d / "x.npy", x.numpy())
    want = {}
    with torch.no_grad():
        for n in ("default", "b"):
            m.set_adapter(n)
            want[n] = m(x).numpy()
            want[f"{n} gap"] = _gap(m, x, n)
    return d, want


def _gap(m, x, name):
    """Per element, how far two float32 evaluations (torch, ORT) of the Linear-ReLU-Linear model with adapter
    ``name`` may be apart on any machine: each within C eps S of the exact value, per layer e_l <= |W_l| e_(l-1)
    + C_l eps S_l through the 1-Lipschitz ReLU, so C = the layers' spec 5.2.3 forward constants summed and S
    the same pass on |inputs|."""
    from vera_ref.tolerance import bound, constant, forward_magnitude
    s, c = x.detach().double().abs().numpy(), 0.0
    for i in (0, 2):
        layer = m.base_model[i]
        (A, B), ld, lb = layer.sliced_projection(name, "cpu"), layer.vera_lambda_d[name], layer.vera_lambda_b[name]
        W, b, A, B, ld, lb = (t.detach().double().numpy() for t in (layer.base_layer.weight, layer.base_layer.bias,
                                                                     A, B, ld, lb))
        s = forward_magnitude(s, W, b, A, B, ld, lb)
        c += constant("forward", "float32", N=x.shape[0], in_features=W.shape[1], out_features=W.shape[0], r=len(ld))
    return 2 * bound(s, "float32", c)


def test_importing_vera_onnx_loads_no_torch(tmp_path):
    res = _py("import sys, vera_onnx\nfrom vera_onnx import VeraOnnxSession, onnx_adapter, projection_model\n"
              "print(sorted(m for m in ('torch', 'transformers', 'vera_torch') if m in sys.modules))", tmp_path)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stderr


def test_serving_works_with_torch_blocked(files):
    d, want = files
    code = BLOCK_TORCH + textwrap.dedent("""
        import numpy as np
        import vera_onnx
        from vera_onnx import VeraOnnxSession, onnx_adapter
        x = np.load("x.npy")
        hot = VeraOnnxSession("hot.onnx")
        hot.load_adapter("a", "default.safetensors")
        onnx_adapter("b.safetensors", "hot.onnx", "b.onnx_adapter")
        hot.load_adapter("b", "b.onnx_adapter")
        multi = VeraOnnxSession("multi.onnx")
        multi.load_adapter("a", "default.safetensors")
        multi.load_adapter("b", "b.onnx_adapter")
        np.save("out.npy", np.stack([hot.run(None, {"x": x}, adapter="a")[0], hot.run(None, {"x": x}, adapter="b")[0],
                                     multi.run(None, {"x": x}, adapter_ids=["b", "a", "b"])[0]]))
        try:
            vera_onnx.export
        except ModuleNotFoundError as exc:
            print(exc)
    """)
    res = _py(code, d)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == ("vera_onnx.export needs torch (pip install 'vera-ref[torch]'); serving exported "
                                  "models needs onnx and onnxruntime only")
    out = np.load(d / "out.npy")
    near = lambda got, n, rows=slice(None): (np.abs(got - want[n][rows]) <= want[f"{n} gap"][rows]).all()  # noqa: E731
    assert near(out[0], "default") and near(out[1], "b")
    assert near(out[2][[0, 2]], "b", [0, 2]) and near(out[2][1], "default", 1)  # each row with its own adapter


def _write_param_file(path, params):
    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(1)
    fmt.set_model_version(1)
    fmt.set_parameters({k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v)) for k, v in params.items()})
    fmt.export_adapter(str(path))


def test_onnx_adapter_values_are_checked_at_load(files, tmp_path):
    d, _ = files
    onnx_adapter(d / "default.safetensors", d / "hot.onnx", tmp_path / "ok.onnx_adapter")
    good = read_parameters(tmp_path / "ok.onnx_adapter", d / "hot.onnx")
    assert sorted(good) == ["0.lambda_b", "0.lambda_d", "2.lambda_b", "2.lambda_d"]
    sess = VeraOnnxSession(d / "hot.onnx")
    cases = [({**good, "0.lambda_d": good["0.lambda_d"].astype(np.float64)},
              r"^0\.lambda_d: dtype float64 in the adapter, float32 in the model$"),
             ({**good, "2.lambda_b": good["2.lambda_b"].astype(np.float16)},
              r"^2\.lambda_b: dtype float16 in the adapter, float32 in the model$"),
             ({**good, "0.lambda_b": np.where(np.arange(10) == 3, np.nan, good["0.lambda_b"]).astype(np.float32)},
              r"^0\.lambda_b: contains non-finite values \(NaN or infinity\)$"),
             ({**good, "2.lambda_d": np.full(4, np.inf, np.float32)},
              r"^2\.lambda_d: contains non-finite values \(NaN or infinity\)$"),
             ({**good, "0.lambda_d": np.ones(5, np.float32)},
              r"^0\.lambda_d: shape \[5\] in the adapter, \[4\] in the model$"),
             ({**good, "1.lambda_d": np.ones(4, np.float32)},
              r"^1\.lambda_d: the adapter sets a parameter this model does not have$")]
    for i, (params, msg) in enumerate(cases):
        _write_param_file(tmp_path / f"bad{i}.onnx_adapter", params)
        with pytest.raises(OnnxAdapterError, match=msg):
            sess.load_adapter("bad", tmp_path / f"bad{i}.onnx_adapter")
        assert "bad" not in sess.loaded
    (tmp_path / "junk.onnx_adapter").write_bytes(b"\x00" * 64)
    with pytest.raises(OnnxAdapterError, match=r"^file: .*junk\.onnx_adapter is not an ONNX Runtime adapter file"):
        sess.load_adapter("bad", tmp_path / "junk.onnx_adapter")


def test_vera_file_values_that_overflow_the_models_dtype_are_refused(tmp_path):
    m = _model(dtype=torch.float16)
    export(m, (torch.randn(2, 12, dtype=torch.float16),), tmp_path / "h16.onnx", mode="hotswap", input_names=["x"])
    ad = m.to_adapter("default", vector_dtype="float32")
    ad.lambda_b["0"] = ad.lambda_b["0"].astype(np.float32)
    ad.lambda_b["0"][2] = 1e5  # finite in float32 (the adapter), inf in float16 (the model)
    with pytest.raises(OnnxAdapterError, match=r"^0\.lambda_b: values overflow float16$"):
        onnx_adapter(ad, tmp_path / "h16.onnx", tmp_path / "x.onnx_adapter")
    assert not (tmp_path / "x.onnx_adapter").exists()


def _fork_writer(src, model, out, rounds: int, done_fd: int | None = None) -> int:
    """A child process (fork: no interpreter start-up) that writes ``out`` ``rounds`` times, then exits;
    it writes one byte to ``done_fd`` after each completed write."""
    pid = os.fork()
    if pid == 0:  # the child: exit code 0 when every write succeeded
        code = 1
        try:
            for _ in range(rounds):
                onnx_adapter(src, model, out)
                if done_fd is not None:
                    os.write(done_fd, b".")
            code = 0
        finally:
            os._exit(code)
    return pid


def _leftovers(folder):
    return sorted(n for n in os.listdir(folder) if is_temporary(n) or n.endswith(".tmp"))


def test_concurrent_writers_leave_one_whole_file(files, tmp_path):
    """WRITERS processes (8) write the same .onnx_adapter (and sidecar) 25 times each, all at once."""
    d, _ = files
    out = tmp_path / "a.onnx_adapter"
    pids = [_fork_writer(d / "default.safetensors", d / "hot.onnx", out, 25) for _ in range(WRITERS)]
    codes = [os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids]
    assert codes == [0] * WRITERS
    onnx_adapter(d / "default.safetensors", d / "hot.onnx", tmp_path / "ref.onnx_adapter")
    want = read_parameters(tmp_path / "ref.onnx_adapter", d / "hot.onnx")
    got = read_parameters(out, d / "hot.onnx")
    assert sorted(got) == sorted(want) and all(np.array_equal(got[k], want[k]) for k in want)
    assert json.loads((tmp_path / "a.onnx_adapter.json").read_text())["inputs"] == {k: k for k in want}
    assert _leftovers(tmp_path) == []


def test_sigkill_during_writes_keeps_the_old_file_and_leaves_no_temporary(files, tmp_path):
    """A writer rewriting the file in a loop is SIGKILLed at a random moment, KILLS (50) times: every time the
    file is a whole adapter (the old one or the new one) and no temporary of ours is left."""
    d, _ = files
    out = tmp_path / "a.onnx_adapter"
    onnx_adapter(d / "b.safetensors", d / "hot.onnx", out)  # the old file
    old = read_parameters(out, d / "hot.onnx")
    onnx_adapter(d / "default.safetensors", d / "hot.onnx", tmp_path / "new.onnx_adapter")
    new = read_parameters(tmp_path / "new.onnx_adapter", d / "hot.onnx")
    rng = random.Random(0)
    seen = set()
    for i in range(KILLS):
        r, w = os.pipe()
        pid = _fork_writer(d / "default.safetensors", d / "hot.onnx", out, 10**6, w)
        os.close(w)
        if i % 2:  # every other kill lands after at least one whole write (a write takes ~20-80 ms)
            os.read(r, 1)
        time.sleep(rng.uniform(0.0, 0.08))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(r)
        params = read_parameters(out, d / "hot.onnx")  # whole: parses and passes every check
        same = [all(np.array_equal(params[k], ref[k]) for k in ref) for ref in (old, new)]
        assert any(same)
        seen.add(same.index(True))
        json.loads((tmp_path / "a.onnx_adapter.json").read_text())
        left = _leftovers(tmp_path)
        # a kill between naming the anonymous temporary (linkat) and renaming it over the target can
        # leave one named temporary of ours (spec 4.7); the next write of that target sweeps it
        assert len(left) <= 2, left  # at most the file's and the sidecar's
        if left:
            onnx_adapter(d / "b.safetensors", d / "hot.onnx", out)
            assert _leftovers(tmp_path) == []
    assert 1 in seen  # the writers did replace the old file
    onnx_adapter(d / "b.safetensors", d / "hot.onnx", out)
    assert _leftovers(tmp_path) == []
