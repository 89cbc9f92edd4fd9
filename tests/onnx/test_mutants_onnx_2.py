"""vera_onnx kill-tests, second round (issue 15; tools/mutate.py --package vera_onnx): the export's
argument refusals as a table (exact type and message, nothing written), what export returns, tuple
outputs, default dynamic axes, forwards without a signature, the exporter fallback, placeholders when
r equals a layer's width, an adapted module the forward never calls, generator graphs for projection
classes that share A, aten::diff over long axes, the .json sidecar's canonical form, in-memory values
replaced by name, IOBinding runs. Values are compared with the NumPy reference (vera_ref) on adapters
built by vera_ref.new_adapter, independent of the torch model that defined the graph."""
import importlib.util
import json
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from torch import nn  # noqa: E402

import vera_ref  # noqa: E402
from vera_onnx import OnnxAdapterError, VeraOnnxSession, export, onnx_adapter  # noqa: E402
from vera_onnx import torch_export  # noqa: E402
from vera_onnx.errors import ExportError, OnnxError  # noqa: E402
from vera_ref import ModuleSpec, new_adapter  # noqa: E402
from vera_torch import MergeError, VeraConfig, get_vera_model  # noqa: E402

SEED, R = 4, 3
# r = 3 equals the first layer's out_features: its lambda_b and the next layer's lambda_d have one shape,
# so the exporter's placeholders for them must differ (it merges equal initializers)
MODS = [ModuleSpec("0", 6, 3), ModuleSpec("2", 3, 5)]


def _session(path):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _adapter(mods=MODS, r=R, seed=SEED, values=1):
    ad = new_adapter(mods, r, seed=seed)
    rng = np.random.default_rng(values)
    for m in ad.config.modules:
        ad.lambda_d[m.name][:] = rng.uniform(-1, 1, r)
        ad.lambda_b[m.name][:] = rng.uniform(-1, 1, m.out_features)
    return ad


def _reference(x, W, ad):
    """Sequential(Linear, ReLU, Linear) in float64 with ``ad`` (None: the base model) on the modules it names."""
    h = x.astype(np.float64)
    n_in, n_out = (ad.config.n_in, ad.config.n_out) if ad is not None else (0, 0)
    for i, p in enumerate(("0", "2")):
        Wp, bp = W[p]
        if ad is not None and p in ad.lambda_d:
            A, B = vera_ref.projection(ad.config.seed, ad.config.r, n_in, n_out)
            h = vera_ref.forward(h, Wp, bp, A, B, ad.lambda_d[p], ad.lambda_b[p])
        else:
            h = h @ Wp.T + bp
        h = np.maximum(h, 0) if i == 0 else h
    return h


def _near(got, x, W, ads):
    """Row i of ``got`` against ``_reference(x, W, ads[i])`` within its derived bound: per layer the error
    grows to |W_l| e_(l-1) + C_l eps S_l (ReLU is 1-Lipschitz, |relu(a)| <= |a|), so C eps S_out with C the
    sum of the layers' spec 5.2.3 forward constants and S the same pass on |inputs|: any order, any FMA."""
    from vera_ref.tolerance import bound, constant, forward_magnitude
    for i, ad in enumerate(ads):
        xi = x[i: i + 1].astype(np.float64)
        s, c = np.abs(xi), 0.0
        for p in ("0", "2"):
            Wp, bp = W[p]
            if ad is not None and p in ad.lambda_d:
                A, B = vera_ref.projection(ad.config.seed, ad.config.r, ad.config.n_in, ad.config.n_out)
                s, r = forward_magnitude(s, Wp, bp, A, B, ad.lambda_d[p], ad.lambda_b[p]), ad.config.r
            else:
                s, r = s @ np.abs(Wp).T + np.abs(bp), 1
            c += constant("forward", "float32", N=len(x), in_features=Wp.shape[1], out_features=Wp.shape[0], r=r)
        gap = np.abs(np.asarray(got[i: i + 1], np.float64) - _reference(xi, W, ad))
        assert (gap <= bound(s, "float32", c)).all(), (i, gap.max())


def _gap(layer, x, name="default"):
    """Per element, how far two float32 evaluations of one VeRA layer (torch, ORT) may be apart on any
    machine: each within C eps S of the exact value (spec 5.2.3, C derived for the layer's sizes)."""
    from vera_ref.tolerance import bound, constant, forward_magnitude
    base = layer.base_layer
    (A, B), ld, lb = layer.sliced_projection(name, "cpu"), layer.vera_lambda_d[name], layer.vera_lambda_b[name]
    W, b, A, B, ld, lb = (t.detach().double().numpy() for t in (base.weight, base.bias, A, B, ld, lb))
    c = constant("forward", "float32", N=x.shape[0], in_features=W.shape[1], out_features=W.shape[0], r=len(ld))
    return 2 * bound(forward_magnitude(x.detach().double().numpy(), W, b, A, B, ld, lb), "float32", c)


EPS32 = 2.0**-23  # one rounding of a float32 result on each side: eps/2 * |value| each, eps * |value| both


def _weights(m):
    return {p: (m.base_model.get_submodule(p).base_layer.weight.detach().double().numpy(),
                m.base_model.get_submodule(p).base_layer.bias.detach().double().numpy()) for p in ("0", "2")}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp("small")
    torch.manual_seed(0)
    m = get_vera_model(nn.Sequential(nn.Linear(6, 3), nn.ReLU(), nn.Linear(3, 5)),
                       VeraConfig(r=R, target_modules=["0", "2"], seed=SEED)).eval()
    x = torch.randn(2, 6)
    returned = {mode: export(m, (x,), d / f"{mode}.onnx", mode=mode, input_names=["x"],
                             **({"capacity": 2} if mode == "multi" else {}))
                for mode in ("merged", "hotswap", "multi")}
    return d, m, _weights(m), returned


X = np.linspace(-2, 2, 18, dtype=np.float32).reshape(3, 6)


# -- export: what it refuses, what it returns ---------------------------------------------------------------

REFUSED = [
    (dict(mode="lora"), OnnxError, r"^mode must be 'merged', 'hotswap' or 'multi', got 'lora'$"),
    (dict(projections="seed"), OnnxError, r"^projections must be 'initializers' or 'generator', got 'seed'$"),
    (dict(exporter="onnxscript"), OnnxError, r"^exporter must be one of auto, torchscript, dynamo, got 'onnxscript'$"),
    (dict(projections="generator"), OnnxError, r"^a merged model has no projections to generate; use mode='hotswap'$"),
    (dict(mode="multi"), OnnxError, r"^capacity: multi mode needs the number of adapter slots, an integer >= 1, "
                                    r"got None$"),
    (dict(mode="multi", capacity=0), OnnxError, r"^capacity: multi mode needs .*, got 0$"),
    (dict(mode="multi", capacity=True), OnnxError, r"^capacity: multi mode needs .*, got True$"),
    (dict(mode="multi", capacity=2.0), OnnxError, r"^capacity: multi mode needs .*, got 2\.0$"),
    (dict(mode="hotswap", capacity=2), OnnxError, r"^capacity applies to mode='multi' only$"),
    (dict(mode="hotswap", adapters=["default"]), OnnxError, r"^adapters applies to mode='multi' only$"),
    (dict(capacity=1, adapters=["default"]), OnnxError, r"^capacity applies to mode='multi' only$"),
    (dict(adapter="zz"), OnnxError, r"^no adapter named 'zz'$"),
    (dict(mode="multi", capacity=2, adapters=["default", "zz"]), OnnxError, r"^no adapter named 'zz'$"),
    (dict(input_names=["x", "y"]), ExportError, r"^input_names has 2 names for 1 tensor inputs$"),
    # nn.Sequential.forward(input): the positional example gives `input`
    (dict(forward_kwargs={"input": None}), ExportError, r"^forward_kwargs fixes 'input', which the example inputs "
                                                        r"give too$"),
]


@pytest.mark.parametrize("kw,exc,message", REFUSED, ids=[m[2][1:40] for m in REFUSED])
def test_export_refuses_bad_arguments_and_writes_nothing(small, tmp_path, kw, exc, message):
    _, m, _, _ = small
    with pytest.raises(exc, match=message) as info:
        export(m, (torch.randn(2, 6),), tmp_path / "x.onnx", **kw)
    assert type(info.value) is exc
    assert not (tmp_path / "x.onnx").exists()


def test_refusals_that_need_their_own_model(tmp_path):
    """A generator without an ONNX graph cannot be put in the graph; multi mode swaps nn.Linear heads only."""
    torch.manual_seed(0)
    mt = get_vera_model(nn.Sequential(nn.Linear(6, 5)), VeraConfig(r=R, target_modules=["0"], seed=SEED,
                                                                   generator="peft-mt19937")).eval()
    with pytest.raises(OnnxError, match=r"^the peft-mt19937 generator has no ONNX graph; use "
                                        r"projections='initializers'$"):
        export(mt, (torch.randn(2, 6),), tmp_path / "x.onnx", mode="hotswap", projections="generator")
    ln = get_vera_model(nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5)),
                        VeraConfig(r=R, target_modules=["0"], seed=SEED, modules_to_save=["1"])).eval()
    with pytest.raises(OnnxError, match=r"^1: multi mode swaps task heads that are one nn\.Linear per adapter; this "
                                        r"one is a LayerNorm \(export mode='hotswap' per adapter\)$"):
        export(ln, (torch.randn(2, 6),), tmp_path / "x.onnx", mode="multi", capacity=2)
    assert not (tmp_path / "x.onnx").exists()


def test_export_returns_the_model_it_wrote(small):
    d, _, _, returned = small
    for mode, model in returned.items():
        assert isinstance(model, onnx.ModelProto), mode
        assert model.SerializeToString() == onnx.load(d / f"{mode}.onnx").SerializeToString(), mode


def test_exporting_one_adapter_while_another_is_merged_is_refused(tmp_path):
    """The merged weights hold the other adapter's Delta W: folding a second one on top would export W0 +
    both deltas; the export refuses (vera_torch's set_adapter rule) instead."""
    torch.manual_seed(0)
    m = get_vera_model(nn.Sequential(nn.Linear(6, 5)), VeraConfig(r=R, target_modules=["0"], seed=SEED)).eval()
    m.add_adapter("b", VeraConfig(r=R, target_modules=["0"], seed=SEED))
    m.set_adapter("b")
    m.merge("b")
    with pytest.raises(MergeError, match=r"^another adapter is merged; unmerge\(\) before switching$"):
        export(m, (torch.randn(2, 6),), tmp_path / "x.onnx", adapter="default")
    assert not (tmp_path / "x.onnx").exists()


def test_multi_mode_with_given_dynamic_axes_serves_any_batch(tmp_path):
    torch.manual_seed(0)
    m = get_vera_model(nn.Sequential(nn.Linear(6, 3), nn.ReLU(), nn.Linear(3, 5)),
                       VeraConfig(r=R, target_modules=["0", "2"], seed=SEED)).eval()
    W = _weights(m)
    export(m, (torch.randn(2, 6),), tmp_path / "m.onnx", mode="multi", capacity=1, input_names=["x"],
           dynamic_axes={"x": {0: "batch"}})
    ad = _adapter()
    sess = VeraOnnxSession(tmp_path / "m.onnx")
    sess.load_adapter("a", ad)
    got = sess.run(None, {"x": X}, adapter_ids=["a", None, "a"])[0]  # 3 rows; the example had 2
    _near(got, X, W, [ad, None, ad])


def test_tuple_outputs_are_named_output_output_1_and_non_tensors_dropped(tmp_path):
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x):
            y = self.lin(x)
            return y, "a note", y * 2, None, y - 1

    torch.manual_seed(0)
    m = get_vera_model(Two(), VeraConfig(r=2, target_modules=["lin"], seed=1)).eval()
    x = torch.randn(2, 4)
    model = export(m, (x,), tmp_path / "t.onnx", input_names=["x"])
    assert [o.name for o in model.graph.output] == ["output", "output_1", "output_2"]
    got = _session(tmp_path / "t.onnx").run(None, {"x": x.numpy()})
    with torch.no_grad():
        want = [t.numpy() for t in m(x) if torch.is_tensor(t)]
    g = _gap(m.base_model.lin, x)  # y exact-scaled by 2 doubles it; y - 1 adds one rounding per side
    allowed = [g, 2 * g, g + EPS32 * np.abs(want[2])]
    assert len(got) == 3 and all((np.abs(a - w) <= t).all() for a, w, t in zip(got, want, allowed))


AXES = [  # README "Bare models": batch on dim 0; sequence on dim 1 of integer rank-2 and float rank-3 inputs
    ((4,), torch.int64, {0: "batch"}),
    ((4,), torch.float32, {0: "batch"}),
    ((4, 5), torch.int64, {0: "batch", 1: "sequence"}),
    ((4, 5), torch.bool, {0: "batch", 1: "sequence"}),
    ((4, 5), torch.float32, {0: "batch"}),
    ((4, 5, 6), torch.float16, {0: "batch", 1: "sequence"}),
    ((4, 5, 6), torch.int64, {0: "batch"}),
    ((4, 5, 6, 7), torch.float32, {0: "batch"}),
]


def test_default_dynamic_axes():
    names = [f"in{i}" for i in range(len(AXES))]
    got = torch_export._default_axes(names, [torch.zeros(s, dtype=dt) for s, dt, _ in AXES])
    assert got == {n: want for n, (_, _, want) in zip(names, AXES)}


def test_use_cache_and_logits_to_keep_are_fixed_where_the_forward_has_them(tmp_path):
    """README "Bare models": use_cache=False and logits_to_keep=0 are fixed in the graph."""
    class Keywords(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x, use_cache=None, logits_to_keep=None):
            return self.lin(x) * (2.0 if use_cache is False else 3.0) + (10.0 if logits_to_keep == 0 else 20.0)

    torch.manual_seed(0)
    m = get_vera_model(Keywords(), VeraConfig(r=2, target_modules=["lin"], seed=1)).eval()
    x = torch.randn(2, 4)
    export(m, (x,), tmp_path / "k.onnx", input_names=["x"])
    with torch.no_grad():
        want = (m.base_model.lin(x) * 2.0 + 10.0).numpy()
    allowed = 2 * _gap(m.base_model.lin, x) + EPS32 * np.abs(want)  # * 2 exact, + 10 one rounding per side
    assert (np.abs(_session(tmp_path / "k.onnx").run(None, {"x": x.numpy()})[0] - want) <= allowed).all()


def test_a_forward_without_a_signature_exports(tmp_path):
    """inspect.signature fails on some wrapped forwards: no keyword parameters are known then."""
    class Forward:
        __signature__ = "not a signature"  # inspect.signature raises TypeError

        def __init__(self, owner):
            self.owner = owner

        def __call__(self, x):
            return self.owner.lin(x)

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)
            self.__dict__["forward"] = Forward(self)

    torch.manual_seed(0)
    m = get_vera_model(Wrapped(), VeraConfig(r=2, target_modules=["lin"], seed=1)).eval()
    with torch.no_grad():
        m.base_model.lin.vera_lambda_b["default"].fill_(0.5)
    x = torch.randn(2, 4)
    export(m, (x,), tmp_path / "w.onnx", input_names=["x"])
    with torch.no_grad():
        gap = np.abs(_session(tmp_path / "w.onnx").run(None, {"x": x.numpy()})[0] - m(x).numpy())
    assert (gap <= _gap(m.base_model.lin, x)).all()  # one VeRA layer on both sides (spec 5.2.3)


class _Zeta(nn.Module):  # torch.special.zeta: no TorchScript ONNX symbolic
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return torch.special.zeta(self.lin(x), torch.tensor(2.0))


@pytest.mark.parametrize("exporter,want", [("auto", "dynamo"), ("dynamo", "dynamo"),
                                           ("torchscript", r"^the TorchScript exporter cannot export this model: .*"
                                                           r"zeta.*; try exporter='dynamo'$")])
def test_auto_falls_back_to_dynamo_where_onnxscript_is_installed(monkeypatch, tmp_path, exporter, want):
    """onnxscript is not installed here: its presence is simulated and the dynamo exporter recorded."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "onnxscript" else real(name, *a))
    calls = []
    monkeypatch.setattr(torch_export, "_dynamo", lambda *a: calls.append(a))
    model, args = _Zeta(), (torch.randn(2, 4),)
    run = lambda: torch_export._run_exporter(exporter, model, args, str(tmp_path / "z.onnx"), ["x"], ["y"],  # noqa: E731
                                             {"x": {0: "batch"}}, fold=True)
    if want == "dynamo":
        assert run() == "dynamo"
        assert len(calls) == 1 and calls[0] == (model, args, str(tmp_path / "z.onnx"), ["x"], ["y"], {"x": {0: "batch"}})
    else:
        with pytest.raises(ExportError, match=want):
            run()
        assert calls == []


# -- graphs that must keep every parameter apart ----------------------------------------------------------------

def test_r_equal_to_a_layers_width_keeps_every_lambda_its_own_input(small):
    d, _, W, returned = small
    inputs = {i.name for i in returned["hotswap"].graph.input}
    assert {f"{p}.lambda_{v}" for p in ("0", "2") for v in "db"} <= inputs
    ad = _adapter()
    hot = VeraOnnxSession(d / "hotswap.onnx")
    hot.load_adapter("a", ad)
    _near(hot.run(None, {"x": X}, adapter="a")[0], X, W, [ad] * len(X))
    _near(hot.run(None, {"x": X})[0], X, W, [None] * len(X))
    multi = VeraOnnxSession(d / "multi.onnx")
    multi.load_adapter("a", ad)
    got = multi.run(None, {"x": X}, adapter_ids=["a", None, "a"])[0]
    _near(got, X, W, [ad, None, ad])


@pytest.mark.parametrize("mode", ["hotswap", "multi"])
def test_square_layers_of_width_r_keep_every_lambda_its_own_input(tmp_path, mode):
    """Four 3x3 layers with r = 3: all eight lambdas have one shape, so any two placeholders that coincide
    would be merged by the exporter into one initializer."""
    torch.manual_seed(0)
    names = ["0", "2", "4", "6"]
    m = get_vera_model(nn.Sequential(*[nn.Linear(3, 3) if i % 2 == 0 else nn.ReLU() for i in range(7)]),
                       VeraConfig(r=R, target_modules=names, seed=SEED)).eval()
    model = export(m, (torch.randn(2, 3),), tmp_path / "sq.onnx", mode=mode, input_names=["x"],
                   **({"capacity": 1} if mode == "multi" else {}))
    assert {f"{p}.lambda_{v}" for p in names for v in "db"} <= {i.name for i in model.graph.input}
    ad = _adapter([ModuleSpec(p, 3, 3) for p in names])
    sess = VeraOnnxSession(tmp_path / "sq.onnx")
    sess.load_adapter("a", ad)
    x = X[:, :3]
    h = x.astype(np.float64)
    A, B = vera_ref.projection(SEED, R, 3, 3)
    from vera_ref.tolerance import bound, constant, forward_magnitude
    s, c = np.abs(h), 0.0
    for i, p in enumerate(names):
        lin = m.base_model.get_submodule(p).base_layer
        args = (lin.weight.detach().double().numpy(), lin.bias.detach().double().numpy(), A, B,
                ad.lambda_d[p], ad.lambda_b[p])
        h, s = vera_ref.forward(h, *args), forward_magnitude(s, *args)
        c += constant("forward", "float32", N=len(x), in_features=3, out_features=3, r=R)
        h = np.maximum(h, 0) if i < 3 else h
    # layer errors add up through 1-Lipschitz ReLUs: C = the layers' spec 5.2.3 constants summed, S propagated
    assert (np.abs(sess.run(None, {"x": x}, adapter="a")[0] - h) <= bound(s, "float32", c)).all()


def test_an_adapted_module_the_forward_never_calls(tmp_path):
    """`unused` is adapted but never called: nothing of it is in the graph, it is described as such, and the
    modules after it are served as usual."""
    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.unused = nn.Linear(6, 5)
            self.used = nn.Linear(6, 5)

        def forward(self, x):
            return self.used(x)

    torch.manual_seed(0)
    m = get_vera_model(Skip(), VeraConfig(r=R, target_modules=["unused", "used"], seed=SEED)).eval()
    model = export(m, (torch.randn(2, 6),), tmp_path / "s.onnx", mode="hotswap", input_names=["x"])
    desc = json.loads(model.metadata_props[0].value)
    assert [(mm["name"], mm["in_graph"]) for mm in desc["modules"]] == [("unused", False), ("used", True)]
    assert sorted(i.name for i in model.graph.input) == ["used.lambda_b", "used.lambda_d", "x"]
    ad = _adapter([ModuleSpec("unused", 6, 5), ModuleSpec("used", 6, 5)])
    sess = VeraOnnxSession(tmp_path / "s.onnx")
    sess.load_adapter("a", ad)
    lin = m.base_model.used.base_layer
    A, B = vera_ref.projection(SEED, R, 6, 5)
    from vera_ref.tolerance import compare, constant, forward_magnitude
    args = (X.astype(np.float64), lin.weight.detach().double().numpy(), lin.bias.detach().double().numpy(), A, B,
            ad.lambda_d["used"], ad.lambda_b["used"])
    chk = compare(sess.run(None, {"x": X}, adapter="a")[0], vera_ref.forward(*args), forward_magnitude(*args),
                  "float32", constant("forward", "float32", N=len(X), in_features=6, out_features=5, r=R))
    assert chk.ok, chk.describe()  # one VeRA layer: spec 5.2.3's derived C for its sizes holds on any machine


def test_generator_graphs_for_classes_that_share_a(tmp_path):
    """Classes (seed 4, r 3, modules 0 and 2) and (seed 4, r 3, module 2 only) have equal A (6 columns in
    both) and different B (6 vs 4 rows): the exporter merges the equal A; in generator mode no projection
    initializer is left, and each row equals the reference of its adapter."""
    torch.manual_seed(0)
    m = get_vera_model(nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 4)),
                       VeraConfig(r=R, target_modules=["0", "2"], seed=SEED)).eval()
    m.add_adapter("b", VeraConfig(r=R, target_modules=["2"], seed=SEED))
    model = export(m, (torch.randn(2, 6),), tmp_path / "g.onnx", mode="multi", capacity=2, input_names=["x"],
                   projections="generator")
    assert [t.name for t in model.graph.initializer if t.name.startswith("vera_projections.")] == []
    assert len(json.loads(model.metadata_props[0].value)["classes"]) == 2
    W = _weights(m)
    both = _adapter([ModuleSpec("0", 6, 6), ModuleSpec("2", 6, 4)], values=2)
    last = _adapter([ModuleSpec("2", 6, 4)], values=3)
    sess = VeraOnnxSession(tmp_path / "g.onnx")
    sess.load_adapter("both", both)
    sess.load_adapter("last", last)
    got = sess.run(None, {"x": X}, adapter_ids=["last", "both", None])[0]
    _near(got, X, W, [last, both, None])


def test_diff_over_more_than_124_positions(monkeypatch, tmp_path):
    """The aten::diff symbolic slices x[1:] with an open end: a length-200 axis differs all along. The
    symbolic is registered once per process, by the first export: this test registers it again."""
    monkeypatch.setattr(torch_export, "_ADDED", set())
    class Diff(nn.Module):
        def forward(self, x):
            return torch.diff(x, dim=-1, prepend=x[:, :1] - 1)

    m = get_vera_model(nn.Sequential(nn.Linear(4, 200), Diff()), VeraConfig(r=2, target_modules=["0"], seed=0))
    x = torch.randn(3, 4)
    export(m, (x,), tmp_path / "d.onnx", exporter="torchscript", input_names=["x"])
    model = onnx.load(tmp_path / "d.onnx")
    assert "Sub" in {n.op_type for n in model.graph.node}
    got = _session(tmp_path / "d.onnx").run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        want = m(x).numpy()
    g = _gap(m.base_model[0], x)  # y_i - y_(i-1): both layer gaps plus one rounding per side
    with torch.no_grad():
        y0 = m.base_model[0](x)[:, :1].abs().double().numpy()
    prev = np.concatenate([g[:, :1] + EPS32 * (y0 + 1), g[:, :-1]], 1)  # y_0 - (y_0 - 1): that rounding too
    allowed = g + prev + EPS32 * np.abs(want)
    assert got.shape == (3, 200) and (np.abs(got - want) <= allowed).all()


def test_a_bfloat16_model_keeps_its_task_head_as_the_default(tmp_path):
    """NumPy has no bfloat16: the head's base values go through float32 into the bfloat16 initializers."""
    torch.manual_seed(0)
    m = get_vera_model(nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)),
                       VeraConfig(r=R, target_modules=["0"], seed=SEED, modules_to_save=["2"])).eval()
    model = export(m, (torch.randn(2, 6, dtype=torch.bfloat16),), tmp_path / "bf.onnx", mode="hotswap",
                   input_names=["x"], dtype=torch.bfloat16)
    inits = {t.name: t for t in model.graph.initializer}
    head = m.base_model.get_submodule("2").original_module
    assert json.loads(model.metadata_props[0].value)["extra"] == ["2.bias", "2.weight"]
    for k, t in (("2.weight", head.weight), ("2.bias", head.bias)):
        assert inits[k].data_type == onnx.TensorProto.BFLOAT16
        got = onnx.numpy_helper.to_array(inits[k]).astype(np.float32)
        assert np.array_equal(got, t.detach().to(torch.bfloat16).float().numpy()), k
    assert {i.name for i in model.graph.input} >= {"2.weight", "2.bias"}


def test_cumsum_with_a_dtype_exports(tmp_path):
    class CumSum(nn.Module):
        def forward(self, x):
            return x.cumsum(-1, dtype=torch.float64)

    m = get_vera_model(nn.Sequential(nn.Linear(4, 4), CumSum()), VeraConfig(r=2, target_modules=["0"], seed=0)).eval()
    x = torch.randn(2, 4)
    export(m, (x,), tmp_path / "c.onnx", exporter="torchscript", input_names=["x"])
    got = _session(tmp_path / "c.onnx").run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        want = m(x).numpy()
    # float32 layer gaps summed by the float64 cumsum, whose own roundings (< 4 * 2^-53 of the sum) are covered
    allowed = np.cumsum(_gap(m.base_model[0], x), -1) * 1.01 + 2.0**-50 * np.cumsum(np.abs(want), -1)
    assert got.dtype == np.float64 and (np.abs(got - want) <= allowed).all()


# -- serving ----------------------------------------------------------------------------------------------------

def test_graphs_declare_opset_18(small):
    """README "ONNX and ONNX Runtime": opset 18, for runtimes that stop there."""
    from vera_onnx import philox_model, projection_model
    _, _, _, returned = small
    for name, model in [("philox", philox_model()), ("projection", projection_model(1, 2, 3, 4)), *returned.items()]:
        assert {o.domain: o.version for o in model.opset_import}.get("", None) == 18, name


def test_describe_reads_the_metadata_without_external_data(small, tmp_path):
    """describe() needs metadata_props only: a model whose external tensor file is elsewhere still describes."""
    from vera_onnx import describe
    d, _, _, returned = small
    from onnx.external_data_helper import convert_model_to_external_data
    model = onnx.ModelProto()
    model.CopyFrom(returned["hotswap"])
    convert_model_to_external_data(model, all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    onnx.save(model, tmp_path / "ext.onnx")
    (tmp_path / "weights.bin").unlink()
    assert describe(tmp_path / "ext.onnx") == describe(d / "hotswap.onnx")
    assert describe(tmp_path / "ext.onnx")["mode"] == "hotswap"


def test_the_sidecar_is_canonical_json(small, tmp_path):
    d, _, _, _ = small
    path = tmp_path / "a.safetensors"
    vera_ref.save_adapter(_adapter(), path)
    mapping = onnx_adapter(path, d / "hotswap.onnx", tmp_path / "a.onnx_adapter")
    text = (tmp_path / "a.onnx_adapter.json").read_text()
    pairs = json.loads(text, object_pairs_hook=lambda kv: kv)
    assert [k for k, _ in pairs] == ["format", "inputs", "source"]
    inputs = dict(pairs)["inputs"]
    assert [k for k, _ in inputs] == ["0.lambda_b", "0.lambda_d", "2.lambda_b", "2.lambda_d"]
    assert dict(inputs) == mapping == {k: k for k, _ in inputs}
    assert dict(pairs)["format"] == "vera-onnx-adapter-map-1" and dict(pairs)["source"] == str(path)
    assert text == json.dumps({"format": "vera-onnx-adapter-map-1", "inputs": dict(inputs), "source": str(path)},
                              indent=1, sort_keys=True)
    fmt = ort.AdapterFormat.read_adapter(str(tmp_path / "a.onnx_adapter"))
    assert (fmt.get_adapter_version(), fmt.get_model_version()) == (1, 1)


def test_an_adapter_file_that_is_not_a_regular_file_is_named(small, tmp_path):
    d, _, _, _ = small
    sess = VeraOnnxSession(d / "hotswap.onnx")
    for path in (tmp_path / "missing.onnx_adapter", tmp_path):
        with pytest.raises(OnnxAdapterError, match=rf"^file: {re.escape(str(path))} is not a regular file$"):
            sess.load_adapter("a", path)
    assert sess.loaded == []


def test_a_vector_of_the_wrong_length_is_refused_naming_it(small):
    d, _, _, _ = small
    ad = _adapter()
    ad.lambda_d["2"] = np.ones(4, np.float32)  # r is 3
    sess = VeraOnnxSession(d / "hotswap.onnx")
    with pytest.raises(OnnxAdapterError, match=r"^2\.lambda_d: shape \[4\] in the adapter, \[3\] in the model$"):
        sess.load_adapter("a", ad)
    assert sess.loaded == []


def test_in_memory_values_under_a_loaded_name_need_replace(small):
    d, _, W, _ = small
    sess = VeraOnnxSession(d / "multi.onnx")
    first, second = _adapter(values=4), _adapter(values=5)
    values = lambda ad: {f"{p}.lambda_{v}": getattr(ad, f"lambda_{v}")[p].astype(np.float32)  # noqa: E731
                         for p in ("0", "2") for v in "db"}
    sess.set_adapter_values("v", values(first))
    with pytest.raises(OnnxError, match=r"^an adapter named 'v' is already loaded \(replace=True swaps it\)$"):
        sess.set_adapter_values("v", values(second))
    _near(sess.run(None, {"x": X}, adapter="v")[0], X, W, [first] * len(X))
    sess.set_adapter_values("v", values(second), replace=True)
    assert sess.loaded == ["v"]
    _near(sess.run(None, {"x": X}, adapter="v")[0], X, W, [second] * len(X))


def test_iobinding_runs_the_base_model_and_multi_models_refuse_it(small):
    d, _, W, _ = small
    hot = VeraOnnxSession(d / "hotswap.onnx")
    hot.load_adapter("a", _adapter())
    binding = hot.session.io_binding()
    binding.bind_cpu_input("x", X)
    out = ort.OrtValue.ortvalue_from_numpy(np.full((3, 5), np.nan, np.float32))  # written by the run
    binding.bind_ortvalue_output("output", out)
    hot.run_with_iobinding(binding)
    _near(out.numpy(), X, W, [None] * len(X))
    multi = VeraOnnxSession(d / "multi.onnx")
    with pytest.raises(OnnxError, match=r"^a multi model's tables are fed by run\(\); call run\(\) with feeds instead$"):
        multi.run_with_iobinding(multi.session.io_binding())
    with pytest.raises(OnnxError, match=r"^ONNX Runtime ignores adapters under IOBinding; call run\(\) with feeds "
                                        r"instead$"):
        multi.run_with_iobinding(multi.session.io_binding(), adapter="a")


def test_an_adapter_of_another_class_is_refused_by_a_hotswap_model(small):
    d, _, _, _ = small
    sess = VeraOnnxSession(d / "hotswap.onnx")
    with pytest.raises(OnnxAdapterError, match=r"^r: the adapter has 2 but the model was exported with 3 "):
        sess.load_adapter("x", _adapter(r=2))
    assert sess.loaded == []
