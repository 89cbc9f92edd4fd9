"""ONNX serving refusals as a state table (issue 15 items 2-3), written to kill surviving mutants of
backends/vera_onnx/adapters.py and serving.py: a hot-swap model exported once, then adapters that
differ from it in exactly one property, each refused naming that property; the matching adapter is
accepted and equals the NumPy reference."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from torch import nn  # noqa: E402

import vera_ref  # noqa: E402
from vera_ref import ModuleSpec, new_adapter  # noqa: E402
from vera_onnx import VeraOnnxSession, export  # noqa: E402
from vera_onnx.errors import OnnxError  # noqa: E402
from vera_torch import VeraConfig, get_vera_model  # noqa: E402

MODS = [ModuleSpec("0", 6, 5), ModuleSpec("2", 5, 4)]


@pytest.fixture(scope="module")
def hot(tmp_path_factory):
    d = tmp_path_factory.mktemp("hot")
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4))
    m = get_vera_model(base, VeraConfig(r=3, target_modules=["0", "2"], seed=5)).eval()
    export(m, (torch.randn(2, 6),), d / "hot.onnx", mode="hotswap", input_names=["x"])
    W = {p: (getattr(base, p).base_layer.weight.detach().double().numpy(),
             getattr(base, p).base_layer.bias.detach().double().numpy()) for p in ("0", "2")}
    return VeraOnnxSession(d / "hot.onnx"), W, d


def adapter(mods=MODS, r=3, seed=5, **kw):
    ad = new_adapter(mods, r, seed=seed, **kw)
    rng = np.random.default_rng(1)
    for m in ad.config.modules:
        ad.lambda_d[m.name][:] = rng.uniform(-1, 1, r)
        ad.lambda_b[m.name][:] = rng.uniform(-1, 1, m.out_features)
    return ad


REFUSED = [
    ("r", dict(r=4), r"^r: the adapter has 4 but the model was exported with 3"),
    ("seed", dict(seed=6), r"^seed: the adapter has '6' but the model was exported with '5'"),
    ("generator", dict(generator="peft-mt19937"), r"^generator: the adapter has 'peft-mt19937' but the model was"),
    ("sharing", dict(sharing="per-module"), r"^sharing: the adapter has 'per-module' but the model was exported"),
    ("projection size", dict(mods=[ModuleSpec("0", 6, 5), ModuleSpec("2", 5, 6)]),
     r"^n_in/n_out: the adapter's projection is \(6, 6\) but the model's is \(6, 5\)"),
    ("module dims", dict(mods=[ModuleSpec("0", 6, 5), ModuleSpec("2", 5, 3)]),
     r"^modules: '2' is \(in=5, out=4\) in the model but \(in=5, out=3\) in"),
    ("module missing", dict(mods=[ModuleSpec("0", 6, 5), ModuleSpec("3", 4, 4)]),
     r"^modules: '3' is not adapted in the exported model"),
]


@pytest.mark.parametrize("what,change,message", REFUSED, ids=[r[0] for r in REFUSED])
def test_a_hotswap_session_refuses_an_adapter_that_differs_in_one_property(hot, what, change, message):
    sess, _, d = hot
    with pytest.raises(OnnxError, match=message):
        sess.load_adapter("bad", adapter(**change))
    assert "bad" not in sess.loaded


def test_the_matching_adapter_is_accepted_and_equals_the_reference(hot):
    sess, W, _ = hot
    ad = adapter()
    sess.load_adapter("good", ad, replace=True)
    x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(2, 6)
    got = sess.run(None, {"x": x}, adapter="good")[0]
    from vera_ref.tolerance import bound, constant, forward_magnitude
    h = x.astype(np.float64)
    s, c = np.abs(h), 0.0
    for i, p in enumerate(("0", "2")):
        A, B = vera_ref.projection(5, 3, 6, 5)
        args = (W[p][0], W[p][1], A, B, ad.lambda_d[p], ad.lambda_b[p])
        h, s = vera_ref.forward(h, *args), forward_magnitude(s, *args)
        c += constant("forward", "float32", N=2, in_features=W[p][0].shape[1], out_features=W[p][0].shape[0], r=3)
        h = np.maximum(h, 0) if i == 0 else h
    # layer errors add up through the 1-Lipschitz ReLU: C = the two layers' spec 5.2.3 constants, S propagated
    assert (np.abs(got - h) <= bound(s, "float32", c)).all()
    with pytest.raises(OnnxError):  # a name in use needs replace=True
        sess.load_adapter("good", ad)


def test_in_memory_values_need_a_multi_model(hot):
    sess, _, _ = hot
    with pytest.raises(OnnxError, match=r"^set_adapter_values needs a model exported with mode='multi'$"):
        sess.set_adapter_values("v", {})


def test_a_missing_adapter_file_is_named(hot):
    sess, _, d = hot
    with pytest.raises(OnnxError, match=r"^file: "):
        sess.load_adapter("gone", d / "missing.onnx_adapter")
    assert "gone" not in sess.loaded


@pytest.mark.parametrize("mode,projections,message", [
    ("multi", "initializers", r"^the stored generator's projections belong to one adapter; multi mode needs a"),
    ("hotswap", "generator", r"^the stored generator has no seed to put in the graph; use projections='initializers'"),
])
def test_stored_projections_cannot_be_exported_where_a_seed_is_needed(tmp_path, mode, projections, message):
    torch.manual_seed(0)
    m = get_vera_model(nn.Sequential(nn.Linear(6, 5)), VeraConfig(r=3, target_modules=["0"], generator="stored",
                                                                  seed=2)).eval()
    with pytest.raises(OnnxError, match=message):
        export(m, (torch.randn(2, 6),), tmp_path / "x.onnx", mode=mode, projections=projections, input_names=["x"],
               **({"capacity": 2} if mode == "multi" else {}))
    assert not (tmp_path / "x.onnx").exists()
