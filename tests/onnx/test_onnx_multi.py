"""vera_onnx multi mode: one ONNX Runtime session, one batch, a different adapter on every row."""
import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from torch_models import Block, TinyNet  # noqa: E402
from vera_onnx import OnnxAdapterError, VeraOnnxSession, describe, export  # noqa: E402
from vera_ref.errors import OnnxError  # noqa: E402
from vera_torch import VeraConfig, get_vera_model  # noqa: E402

TARGETS = ["query", "value", "c_fc"]
NAMES = ("a", "b", "c")


# Values are compared in float64 (ORT runs the float64 export): two float64 paths of one function (torch and
# ORT, a mixed batch and a row alone) differ by ~(terms + ops on a value's way, < 100) * 2^-53 * S, times the
# gains of softmax, tanh-GELU and the next layers (S / |y| and gains < 1e3 for these small nets, elementwise
# float64 kernels within a few ulps): under 1e-10 of the output scale on any BLAS or thread count, while a
# wrong row, slot or adapter moves the output by > 1e-2 of it. (Float32 sides would differ by an amount no
# kernel documents; ORT has no float64 Erf, hence the tanh form of GELU.)
REL64 = 1e-9


class _TanhBlock(Block):
    """TinyNet's block with GELU's tanh form (ORT's CPU provider has no float64 Erf)."""

    def forward(self, x):
        att = torch.softmax(self.query(x) @ self.key(x).transpose(-1, -2) / x.shape[-1] ** 0.5, -1) @ self.value(x)
        return x + self.out(torch.nn.functional.gelu(self.c_fc(x + att), approximate="tanh"))


def _close64(got, want):
    """|got - want| <= REL64 * max(1, max |want|), both float64 (the bound above)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype == np.float64, (got.dtype, want.dtype)
    return bool((np.abs(got - want) <= REL64 * max(1.0, float(np.abs(want).max()))).all())


@pytest.fixture
def f64():
    """Tensors made in the test are float64 (torch.randn, new modules)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _tiny64():
    torch.manual_seed(0)
    base = TinyNet().double()
    for b in base.blocks:
        b.__class__ = _TanhBlock
    return base


def _trained(seed=5, r=8, names=NAMES, heads=True, f64=False):
    """TinyNet with adapters ``names`` of one (generator, seed, r), each with its own random vectors and head
    (``f64``: the float64 tanh-GELU TinyNet)."""
    torch.manual_seed(0)
    base = _tiny64() if f64 else TinyNet()
    kw = {"modules_to_save": ["classifier"]} if heads else {}
    m = get_vera_model(copy.deepcopy(base), VeraConfig(r=r, target_modules=TARGETS, seed=seed, **kw), names[0])
    for n in names[1:]:
        m.add_adapter(n, VeraConfig(r=r, target_modules=TARGETS, seed=seed, **kw))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "vera_lambda" in n or ".copies." in n:
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype))
    return (base.double().eval(), m.double().eval()) if f64 else (base.eval(), m.eval())


def _alone(m, x, name):
    """Torch output of one row block run alone with adapter ``name`` (None: the base model)."""
    with torch.no_grad():
        if name is None:
            with m.disable_adapter():
                return m(x).numpy()
        m.set_adapter(name)
        return m(x).numpy()


def _serve(d, f64: bool = False):
    """The multi export of _trained's model, every adapter saved and loaded into one session."""
    base, m = _trained(f64=f64)
    x = torch.randn(3, 4, 16, dtype=torch.float64 if f64 else torch.float32)
    export(m, (x,), d / "multi.onnx", mode="multi", capacity=4, input_names=["x"])
    for n in NAMES:
        m.save_adapter(d / f"{n}.safetensors", n)
    sess = VeraOnnxSession(d / "multi.onnx")
    for n in NAMES:
        sess.load_adapter(n, d / f"{n}.safetensors")
    return d, base, m, sess


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    return _serve(tmp_path_factory.mktemp("multi"))


@pytest.fixture(scope="module")
def served64(tmp_path_factory):
    return _serve(tmp_path_factory.mktemp("multi64"), f64=True)


def test_the_graph_has_one_index_input_and_tables_with_a_base_row(served):
    d, _, m, sess = served
    desc = describe(d / "multi.onnx")
    assert (desc["mode"], desc["capacity"], desc["index_input"]) == ("multi", 4, "adapter_index")
    model = onnx.load(d / "multi.onnx")
    inputs = {i.name: [x.dim_param or x.dim_value for x in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert inputs["x"] == ["batch", "sequence", 16] and inputs["adapter_index"] == ["batch"]
    assert inputs["blocks.0.query.lambda_d"] == [5, 8] and inputs["blocks.1.c_fc.lambda_b"] == [5, 24]
    assert inputs["classifier.weight"] == [5, 3, 16] and inputs["classifier.bias"] == [5, 3]
    assert sorted(desc["tables"]) == sorted([f"blocks.{i}.{t}.lambda_{v}" for i in range(2) for t in TARGETS
                                             for v in "db"] + ["classifier.bias", "classifier.weight"])
    # for the whole batch, whatever the number of adapters: one x A^T per distinct layer input (query and value
    # read the same x: one; c_fc another) and one B^T product per adapted layer. Per block: 3 Linear (q, k, v)
    # + 2 attention + 1 out + 2 x A^T + 3 B^T; then the batched head
    assert sum(n.op_type == "MatMul" for n in model.graph.node) == 2 * (3 + 2 + 1 + 2 + 3) + 1


@pytest.mark.parametrize("shape", [(5, 3), (7, 6)])
def test_mixed_batch_rows_equal_each_row_alone_with_its_adapter(served64, shape, f64):
    _, base, m, sess = served64
    ids = (["a", None, "c", "b", "a", "c", None][: shape[0]])
    x = torch.randn(shape[0], shape[1], 16)
    got = sess.run(None, {"x": x.numpy()}, adapter_ids=ids)[0]
    for i, n in enumerate(ids):
        want = _alone(m, x[i: i + 1], n)
        assert _close64(got[i: i + 1], want), (i, n, np.abs(got[i] - want).max())  # REL64: float64 both sides
    with torch.no_grad():  # and torch's own mixed batch
        assert _close64(got, m(x, adapter_ids=ids).numpy())
    # no adapter on any row: the base model
    assert _close64(sess.run(None, {"x": x.numpy()})[0], base(x).detach().numpy())
    # one adapter for the whole batch
    assert _close64(sess.run(None, {"x": x.numpy()}, adapter="b")[0], _alone(m, x, "b"))


def test_adapters_come_and_go_by_name_in_a_running_session(tmp_path, f64):
    _, m = _trained(names=("a", "b", "c", "d"), f64=True)
    x = torch.randn(4, 3, 16)
    export(m, (x,), tmp_path / "multi.onnx", mode="multi", capacity=2, input_names=["x"])
    for n in "abcd":
        m.save_adapter(tmp_path / f"{n}.safetensors", n)
    sess = VeraOnnxSession(tmp_path / "multi.onnx")
    sess.load_adapter("a", tmp_path / "a.safetensors")
    sess.load_adapter("b", tmp_path / "b.safetensors")
    with pytest.raises(OnnxError, match=r"^all 2 adapter slots are in use; remove_adapter\(\) one first"):
        sess.load_adapter("c", tmp_path / "c.safetensors")
    with pytest.raises(OnnxError, match=r"^an adapter named 'a' is already loaded"):
        sess.load_adapter("a", tmp_path / "c.safetensors")
    sess.remove_adapter("a")
    with pytest.raises(OnnxError, match=r"^no adapter named 'a' is loaded \(loaded: b\)$"):
        sess.run(None, {"x": x.numpy()}, adapter_ids=["a", "b", None, "b"])
    sess.load_adapter("c", tmp_path / "c.safetensors")  # takes the freed slot
    sess.load_adapter("b", tmp_path / "d.safetensors", replace=True)  # name "b" now serves d's vectors
    ids = ["c", "b", None, "c"]
    got = sess.run(None, {"x": x.numpy()}, adapter_ids=ids)[0]
    for i, (n, src) in enumerate(zip(ids, ["c", "d", None, "c"])):
        assert _close64(got[i: i + 1], _alone(m, x[i: i + 1], src)), i  # REL64: float64 both sides
    # an .onnx_adapter file loads into a slot too
    from vera_onnx import onnx_adapter
    onnx_adapter(tmp_path / "a.safetensors", tmp_path / "multi.onnx", tmp_path / "a.onnx_adapter")
    sess.remove_adapter("c")
    sess.load_adapter("a2", tmp_path / "a.onnx_adapter")
    assert _close64(sess.run(None, {"x": x.numpy()}, adapter_ids=["a2"] * 4)[0], _alone(m, x, "a"))


def test_refusals(served, tmp_path):
    d, _, m, sess = served
    x = np.random.default_rng(0).normal(size=(2, 3, 16)).astype(np.float32)
    with pytest.raises(OnnxError, match=r"^adapter_ids has 3 entries but the batch has 2 rows$"):
        sess.run(None, {"x": x}, adapter_ids=["a", "b", "c"])
    with pytest.raises(OnnxError, match=r"^adapter_index: set by the session from its loaded adapters"):
        sess.run(None, {"x": x, "adapter_index": np.zeros(2, np.int64)})
    with pytest.raises(OnnxError, match=r"^no adapter named 'zz' is loaded \(loaded: a, b, c\)$"):
        sess.run(None, {"x": x}, adapter_ids=["a", "zz"])
    # an adapter of another seed needs other projections: refused (one graph = one generator, seed, r)
    _, other = _trained(seed=6, names=("o",))
    other.save_adapter(tmp_path / "o.safetensors", "o")
    with pytest.raises(OnnxAdapterError, match=r"^seed: the adapter has '6' but the model was exported with '5'"):
        sess.load_adapter("o", tmp_path / "o.safetensors")
    _, other_r = _trained(r=4, names=("o",))
    other_r.save_adapter(tmp_path / "o4.safetensors", "o")
    with pytest.raises(OnnxAdapterError, match=r"^r: the adapter has 4 but the model was exported with 8"):
        sess.load_adapter("o", tmp_path / "o4.safetensors")
    good = {"blocks.0.query.lambda_d": np.ones(8, np.float32)}
    sess.set_adapter_values("v", good)
    sess.remove_adapter("v")
    for bad, msg in (({"blocks.0.query.lambda_d": np.ones(7, np.float32)},
                      r"^blocks\.0\.query\.lambda_d: shape \[7\] in the adapter, \[8\] in the model$"),
                     ({"blocks.0.query.lambda_d": np.ones(8, np.float64)},
                      r"^blocks\.0\.query\.lambda_d: dtype float64 in the adapter, float32 in the model$"),
                     ({"blocks.0.query.lambda_b": np.array([np.nan] + [0] * 15, np.float32)},
                      r"^blocks\.0\.query\.lambda_b: contains non-finite values \(NaN or infinity\)$"),
                     ({"blocks.0.nothing.lambda_b": np.ones(16, np.float32)},
                      r"^blocks\.0\.nothing\.lambda_b: the adapter sets a parameter this model does not have$")):
        with pytest.raises(OnnxAdapterError, match=msg):
            sess.set_adapter_values("v", bad)
        assert "v" not in sess.loaded  # nothing changed
    with pytest.raises(OnnxError, match=r"^capacity: multi mode needs the number of adapter slots"):
        export(m, (torch.from_numpy(x),), tmp_path / "x.onnx", mode="multi", input_names=["x"])


def test_generator_graph_in_multi_mode(tmp_path, f64):
    _, m = _trained(heads=False, f64=True)
    x = torch.randn(3, 4, 16)
    export(m, (x,), tmp_path / "init.onnx", mode="multi", capacity=3, input_names=["x"])
    export(m, (x,), tmp_path / "gen.onnx", mode="multi", capacity=3, input_names=["x"], projections="generator")
    names = {t.name for t in onnx.load(tmp_path / "gen.onnx").graph.initializer}
    assert "vera_projections.A_0" not in names
    outs = []
    for f in ("init.onnx", "gen.onnx"):
        sess = VeraOnnxSession(tmp_path / f)
        for n in NAMES:
            m.save_adapter(tmp_path / f"{n}.safetensors", n)
            sess.load_adapter(n, tmp_path / f"{n}.safetensors")
        outs.append(sess.run(None, {"x": x.numpy()}, adapter_ids=["c", "a", "b"])[0])
    assert np.array_equal(outs[0], outs[1])
    assert _close64(outs[1][:1], _alone(m, x[:1], "c"))  # REL64: float64 both sides


def test_hotswap_session_refuses_mixed_rows(tmp_path, f64):
    _, m = _trained(heads=False, f64=True)
    x = torch.randn(2, 3, 16)
    export(m, (x,), tmp_path / "hot.onnx", mode="hotswap", input_names=["x"])
    m.save_adapter(tmp_path / "a.safetensors", "a")
    sess = VeraOnnxSession(tmp_path / "hot.onnx")
    sess.load_adapter("a", tmp_path / "a.safetensors")
    assert _close64(sess.run(None, {"x": x.numpy()}, adapter_ids=["a", "a"])[0], _alone(m, x, "a"))  # REL64
    with pytest.raises(OnnxError, match=r"^this model serves one adapter per run \(exported with mode='hotswap'\)"):
        sess.run(None, {"x": x.numpy()}, adapter_ids=["a", None])


def test_adapters_of_different_seeds_ranks_and_modules_in_one_batch(tmp_path, f64):
    """One graph serves every projection class of the model's adapters: (seed 5, r 8), (seed 6, r 8),
    (seed 5, r 4) and (seed 5, r 8 on query only); each row equals its adapter run alone."""
    torch.manual_seed(0)
    m = get_vera_model(_tiny64(), VeraConfig(r=8, target_modules=TARGETS, seed=5), "a")
    m.add_adapter("b", VeraConfig(r=8, target_modules=TARGETS, seed=6))
    m.add_adapter("c", VeraConfig(r=4, target_modules=TARGETS, seed=5))
    m.add_adapter("d", VeraConfig(r=8, target_modules=["query"], seed=5))
    m.add_adapter("a2", VeraConfig(r=8, target_modules=TARGETS, seed=5))  # a's class
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "vera_lambda" in n:
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).float())
    m.double().eval()
    x = torch.randn(6, 3, 16)
    export(m, (x,), tmp_path / "multi.onnx", mode="multi", capacity=5, input_names=["x"], projections="generator")
    desc = describe(tmp_path / "multi.onnx")
    assert [(c["seed"], c["r"], c["suffix"], len(c["modules"])) for c in desc["classes"]] == \
        [("5", 8, "", 6), ("6", 8, "@1", 6), ("5", 4, "@2", 6), ("5", 8, "@3", 2)]
    sess = VeraOnnxSession(tmp_path / "multi.onnx")
    for n in ("a", "b", "c", "d", "a2"):
        m.save_adapter(tmp_path / f"{n}.safetensors", n)
        sess.load_adapter(n, tmp_path / f"{n}.safetensors")
    ids = ["d", "b", None, "c", "a2", "a"]
    got = sess.run(None, {"x": x.numpy()}, adapter_ids=ids)[0]
    for i, n in enumerate(ids):
        assert _close64(got[i: i + 1], _alone(m, x[i: i + 1], n)), (i, n)  # REL64: float64 both sides
    _, other = _trained(seed=9, names=("o",), heads=False)
    other.save_adapter(tmp_path / "o.safetensors", "o")
    with pytest.raises(OnnxAdapterError, match=r"^projection: the adapter fits none of the model's 4 projection "
                                               r"classes: class 0: seed: the adapter has '9' but"):
        sess.load_adapter("o", tmp_path / "o.safetensors")
