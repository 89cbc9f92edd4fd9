"""vera_onnx: the generator graph, merged and hot-swap exports, ORT adapters and serving."""
import copy
import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import vera_ref  # noqa: E402
from conftest import ROOT, VECTORS  # noqa: E402
from torch_models import Block, TinyNet, randomise  # noqa: E402
from vera_onnx import VeraOnnxSession, export, onnx_adapter, philox_model, projection_model  # noqa: E402
from vera_onnx.torch_export import _torchscript  # noqa: E402
from vera_ref.errors import OnnxError  # noqa: E402
from vera_ref.tolerance import compare, constant, forward_magnitude  # noqa: E402
from vera_torch import VeraConfig, get_vera_model  # noqa: E402


def _session(path_or_model):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    src = path_or_model.SerializeToString() if isinstance(path_or_model, onnx.ModelProto) else str(path_or_model)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def test_generator_graph_reproduces_random123():
    s = _session(philox_model())
    env = json.loads((VECTORS / "philox4x32_10.json").read_text())
    tests = [t for g in env["testGroups"] for t in g["tests"]]
    for t in tests:
        w = s.run(None, {"counters": np.array([[int(x, 16) for x in t["counter"]]], np.uint32),
                         "key": np.array([int(x, 16) for x in t["key"]], np.uint32)})[0]
        assert [f"{int(v):08x}" for v in w[0]] == t["expected"], t["tcId"]
    assert len(tests) == 55


@pytest.mark.parametrize("args", [(0, 1, 1, 1, 0), (2**64 - 1, 7, 33, 65, 3), (0, 4, 65539, 17, 0),
                                  (42, 256, 768, 768, 0)])
def test_generator_graph_is_bit_identical_to_the_reference(args):
    A, B = _session(projection_model(*args)).run(None, {})
    a, b = vera_ref.projection(*args)
    assert np.array_equal(A, a) and np.array_equal(B, b)


def _model(seed=5, r=8, f64=False, **kw):
    """TinyNet with an adapter (``f64``: in float64 with GELU's tanh form; ORT's CPU provider has no float64 Erf)."""
    torch.manual_seed(0)
    base = TinyNet()
    if f64:
        base = base.double()
        for b in base.blocks:
            b.__class__ = _TanhBlock
    m = get_vera_model(copy.deepcopy(base), VeraConfig(r=r, target_modules=["query", "value", "c_fc"], seed=seed, **kw))
    randomise(m)
    return (base.double(), m.double().eval()) if f64 else (base, m.eval())


class _TanhBlock(Block):
    def forward(self, x):
        att = torch.softmax(self.query(x) @ self.key(x).transpose(-1, -2) / x.shape[-1] ** 0.5, -1) @ self.value(x)
        return x + self.out(torch.nn.functional.gelu(self.c_fc(x + att), approximate="tanh"))


# torch vs ORT on float64 exports (as tests/onnx/test_onnx_multi.py): two float64 paths of one function differ by
# ~(terms + ops, < 100) * 2^-53 * S times the gains of softmax, tanh-GELU and the next layers (< 1e3 here), under
# 1e-10 of the output scale on any BLAS or thread count; a wrong adapter or head moves it by > 1e-2 of it
REL64 = 1e-9


def _float32_vectors(m):
    """The model's lambdas rounded to float32, the files' vector dtype, so that torch and ORT use equal values."""
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "vera_lambda" in n:
                p.copy_(p.float().to(p.dtype))
    return m.double()


def _close64(got, want):
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype == np.float64, (got.dtype, want.dtype)
    return bool((np.abs(got - want) <= REL64 * max(1.0, float(np.abs(want).max()))).all())


def _feeds(m, name="default"):
    return {f"{p}.lambda_{v}": getattr(m.base_model.get_submodule(p), f"vera_lambda_{v}")[name].detach().numpy()
            for p in m.vera_modules[name] for v in "db"}


def test_merged_export_has_the_base_models_operators_and_dynamic_axes(tmp_path):
    base, m = _model(f64=True)
    x = torch.randn(2, 3, 16, dtype=torch.float64)
    export(m, (x,), tmp_path / "merged.onnx", input_names=["x"])
    _torchscript(base.eval(), (x,), str(tmp_path / "base.onnx"), ["x"], ["output"],
                  {"x": {0: "batch", 1: "sequence"}}, fold=True)
    ops = lambda p: Counter(n.op_type for n in onnx.load(p).graph.node)  # noqa: E731
    assert ops(tmp_path / "merged.onnx") == ops(tmp_path / "base.onnx")
    s = _session(tmp_path / "merged.onnx")
    assert _close64(s.run(None, {"x": x.numpy()})[0], m(x).detach().numpy())  # REL64: float64 both sides
    x2 = torch.randn(5, 7, 16, dtype=torch.float64)  # other batch and sequence sizes
    assert _close64(s.run(None, {"x": x2.numpy()})[0], m(x2).detach().numpy())


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("mode", ["merged", "hotswap"])
def test_ort_matches_the_reference_within_spec_tolerance(tmp_path, mode, dtype):
    """One layer, ORT output against vera_ref's float64 forward (spec 5.2), inputs rounded to the dtype."""
    from torch import nn
    from vera_ref.dtypes import round_to
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(24, 20))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.from_numpy(round_to(p.detach().double().numpy(), dtype).astype(np.float32)))
    m = get_vera_model(net, VeraConfig(r=7, target_modules=["0"], seed=11)).eval()
    layer = m.base_model[0]
    with torch.no_grad():
        layer.vera_lambda_d["default"].copy_(torch.from_numpy(round_to(np.random.default_rng(0).normal(size=7), dtype)))
        layer.vera_lambda_b["default"].copy_(torch.from_numpy(round_to(np.random.default_rng(1).normal(size=20), dtype)))
    x = round_to(np.random.default_rng(2).normal(size=(6, 24)), dtype)
    tdt = torch.float16 if dtype == "float16" else torch.float32
    export(m, (torch.from_numpy(x.astype(np.float32)).to(tdt),), tmp_path / "m.onnx", mode=mode, dtype=tdt,
           input_names=["x"])
    feeds = {"x": x.astype(np.float16 if dtype == "float16" else np.float32)}
    if mode == "hotswap":
        feeds.update({k: v.astype(feeds["x"].dtype) for k, v in _feeds(m).items()})
    got = _session(tmp_path / "m.onnx").run(None, feeds)[0]
    W, b = layer.base_layer.weight.detach().double().numpy(), layer.base_layer.bias.detach().double().numpy()
    ld, lb = (layer.vera_lambda_d["default"].detach().double().numpy(),
              layer.vera_lambda_b["default"].detach().double().numpy())
    A, B = vera_ref.projection(11, 7, 24, 20)
    ref = vera_ref.forward(x.astype(np.float64), W, b, A, B, ld, lb)
    # spec 5.2.3: C derived for this layer's sizes, so the bound holds for any summation order or FMA use
    chk = compare(got, ref, forward_magnitude(x.astype(np.float64), W, b, A, B, ld, lb), dtype,
                  constant("forward", dtype, N=6, in_features=24, out_features=20, r=7))
    assert chk.ok, chk.describe()


def test_hotswap_defaults_to_the_base_model_and_each_adapter_equals_its_merged_model(tmp_path):
    base, m = _model(f64=True)
    m.add_adapter("b", VeraConfig(r=8, target_modules=["query", "value", "c_fc"], seed=5))
    randomise(m)
    with torch.no_grad():
        for layer in m.vera_layers():
            layer.vera_lambda_b["b"].mul_(-3)
    _float32_vectors(m)
    x = torch.randn(2, 3, 16, dtype=torch.float64)
    export(m, (x,), tmp_path / "hot.onnx", mode="hotswap", input_names=["x"])
    sess = VeraOnnxSession(tmp_path / "hot.onnx")
    assert _close64(sess.run(None, {"x": x.numpy()})[0], base.eval()(x).detach().numpy())  # REL64: float64
    for name in ("default", "b"):
        m.set_adapter(name)
        export(m, (x,), tmp_path / f"merged_{name}.onnx", input_names=["x"])
        m.save_adapter(tmp_path / f"{name}.safetensors", name)
        sess.load_adapter(name, tmp_path / f"{name}.safetensors")
        want = _session(tmp_path / f"merged_{name}.onnx").run(None, {"x": x.numpy()})[0]
        assert _close64(sess.run(None, {"x": x.numpy()}, adapter=name)[0], want), name  # two float64 graphs
    # an .onnx_adapter file written by the converter loads the same way
    mapping = onnx_adapter(tmp_path / "b.safetensors", tmp_path / "hot.onnx", tmp_path / "b.onnx_adapter")
    assert json.loads((tmp_path / "b.onnx_adapter.json").read_text())["inputs"] == mapping
    sess.load_adapter("b2", tmp_path / "b.onnx_adapter")
    assert np.array_equal(sess.run(None, {"x": x.numpy()}, adapter="b2")[0],
                          sess.run(None, {"x": x.numpy()}, adapter="b")[0])


def test_generator_in_the_graph_instead_of_projections(tmp_path):
    from torch import nn
    torch.manual_seed(0)
    m = get_vera_model(nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 128)),
                       VeraConfig(r=256, target_modules=["0", "2"], seed=9)).eval()
    randomise(m)
    x = torch.randn(2, 256)
    export(m, (x,), tmp_path / "init.onnx", mode="hotswap", input_names=["x"])
    export(m, (x,), tmp_path / "gen.onnx", mode="hotswap", projections="generator", input_names=["x"])
    names = {t.name for t in onnx.load(tmp_path / "gen.onnx").graph.initializer}
    assert "vera_projections.A_0" not in names and "vera_projections.B_0" not in names
    # A and B (256 x 256 each, 512 kB) replaced by a graph of a few tens of kB
    assert (tmp_path / "gen.onnx").stat().st_size < (tmp_path / "init.onnx").stat().st_size - 400_000
    feeds = {"x": x.numpy(), **_feeds(m)}
    assert np.array_equal(_session(tmp_path / "gen.onnx").run(None, feeds)[0],
                          _session(tmp_path / "init.onnx").run(None, feeds)[0])


def test_refusals(tmp_path):
    _, m = _model()
    x = torch.randn(2, 3, 16)
    export(m, (x,), tmp_path / "hot.onnx", mode="hotswap", input_names=["x"])
    m.save_adapter(tmp_path / "a.safetensors")
    sess = VeraOnnxSession(tmp_path / "hot.onnx")
    sess.load_adapter("a", tmp_path / "a.safetensors")
    sess.load_adapter("a_again", tmp_path / "a.safetensors")
    with pytest.raises(OnnxError, match=r"^adapters 'a' and 'a_again' both set 'blocks\.0\.c_fc\.lambda_b'; ONNX "
                                        r"Runtime would apply one of them silently$"):
        sess.run(None, {"x": x.numpy()}, adapter=["a", "a_again"])
    with pytest.raises(OnnxError, match="^ONNX Runtime ignores adapters under IOBinding"):
        sess.run_with_iobinding(sess.session.io_binding(), adapter="a")
    with pytest.raises(OnnxError, match="^no adapter named 'zz' is loaded"):
        sess.run(None, {"x": x.numpy()}, adapter="zz")
    _, other = _model(seed=6)
    other.save_adapter(tmp_path / "o.safetensors")
    with pytest.raises(OnnxError, match=r"^seed: the adapter has '6' but the model was exported with '5'"):
        sess.load_adapter("o", tmp_path / "o.safetensors")
    with pytest.raises(OnnxError, match="^mode must be .merged., .hotswap. or .multi., got .lora.$"):
        export(m, (x,), tmp_path / "x.onnx", mode="lora")


def test_cli_export_and_onnx_adapter(tmp_path):
    _, m = _model()
    m.save_adapter(tmp_path / "a.safetensors", fingerprint=False)
    env = dict(__import__("os").environ, PYTHONPATH=str(ROOT / "tests"))
    run = lambda *a: subprocess.run([sys.executable, "-m", "vera_ref.cli", *a], capture_output=True, text=True,  # noqa: E731
                                    cwd=ROOT, env=env)
    res = run("export-onnx", "--model", "onnx_factories:tiny", "--adapter", str(tmp_path / "a.safetensors"),
              "--out", str(tmp_path / "hot.onnx"), "--mode", "hotswap", "--projections", "generator")
    assert res.returncode == 0, res.stderr
    res = run("onnx-adapter", str(tmp_path / "a.safetensors"), "--model", str(tmp_path / "hot.onnx"),
              "--out", str(tmp_path / "a.onnx_adapter"))
    assert res.returncode == 0 and "wrote" in res.stdout, res.stderr
    sess = VeraOnnxSession(tmp_path / "hot.onnx")
    sess.load_adapter("a", tmp_path / "a.onnx_adapter")
    x = torch.randn(2, 3, 16)
    # NOT derived (issue 21): onnx_factories:tiny is a float32 TinyNet with Erf-GELU and softmax, whose ORT/torch
    # float32 kernels document no bound, and ORT has no float64 Erf; 1e-5 rests on those kernels (see the report)
    assert np.allclose(sess.run(None, {"x": x.numpy()}, adapter="a")[0], m(x).detach().numpy(), atol=1e-5)


def test_hotswap_swaps_the_task_head_too(tmp_path):
    base, m = _model(modules_to_save=["classifier"], f64=True)
    m.add_adapter("b", VeraConfig(r=8, target_modules=["query", "value", "c_fc"], seed=5,
                                  modules_to_save=["classifier"]))
    randomise(m)
    with torch.no_grad():
        m.base_model.classifier.copies["default"].bias.add_(1.0)
        m.base_model.classifier.copies["b"].weight.mul_(-1)
    _float32_vectors(m)
    x = torch.randn(2, 3, 16, dtype=torch.float64)
    export(m, (x,), tmp_path / "hot.onnx", mode="hotswap", input_names=["x"])
    sess = VeraOnnxSession(tmp_path / "hot.onnx")
    assert sess.description["extra"] == ["classifier.bias", "classifier.weight"]
    assert _close64(sess.run(None, {"x": x.numpy()})[0], base.eval()(x).detach().numpy())  # REL64: float64
    for name in ("default", "b"):
        m.save_adapter(tmp_path / f"{name}.safetensors", name)
        sess.load_adapter(name, tmp_path / f"{name}.safetensors")
        m.set_adapter(name)
        assert _close64(sess.run(None, {"x": x.numpy()}, adapter=name)[0], m(x).detach().numpy()), name  # REL64
