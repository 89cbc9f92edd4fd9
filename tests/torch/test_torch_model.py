"""vera_torch.VeraModel: wrapping, math against vera_ref, adapters, merge, files, serving."""
import copy
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import vera_ref  # noqa: E402
from conftest import ROOT  # noqa: E402
from torch_models import Conv1D, TinyNet, randomise  # noqa: E402
from vera_ref.errors import ModelMismatchError  # noqa: E402
from vera_ref.tolerance import backward_magnitude, compare, constant, forward_magnitude  # noqa: E402
from vera_torch import AdapterNameError, BatchError, ConfigError, VeraConfig, VeraLayer, VeraModel, get_vera_model  # noqa: E402
from vera_torch import functional as F  # noqa: E402


def _net(dtype=torch.float32, **cfg):
    torch.manual_seed(0)
    base = TinyNet().to(dtype)
    kw = dict(r=8, target_modules=["query", "value", "c_fc"], seed=5)
    kw.update(cfg)
    return base, get_vera_model(copy.deepcopy(base), VeraConfig(**kw))


def _net64(**cfg):
    """TinyNet and its VeraModel wholly in float64 (weights, vectors, A and B)."""
    base, m = _net(torch.float64, **cfg)
    return base, m.double()


# Two paths that compute one function of a TinyNet (another order of the same sums, merged weights, another
# kernel) differ in float64 by at most ~(terms + ops on a value's way, < 200) * 2^-53 * S per block,
# amplified by softmax, gelu and the residuals (|y| ~ 10, S / |y| and the gain of two blocks each < 10):
# under 1e-11 of the output scale on any BLAS or thread count, and a missing adapter term or a wrong row
# moves y by > 1e-2 of it.
ATOL64 = 1e-9


def _close64(a, b):
    """|a - b| <= ATOL64 * max(1, max |b|), both float64 (the bound above)."""
    assert a.dtype == b.dtype == torch.float64
    return torch.allclose(a, b, rtol=0.0, atol=ATOL64 * max(1.0, float(b.detach().abs().max())))


def test_targets_by_suffix_and_regex_and_conv1d_without_transformers():
    _, m = _net()
    assert m.vera_modules["default"] == [f"blocks.{i}.{n}" for i in range(2) for n in ("query", "value", "c_fc")]
    c = m.base_model.get_submodule("blocks.0.c_fc")
    assert isinstance(c, VeraLayer) and c.layout == "conv1d" and (c.in_features, c.out_features) == (16, 24)
    _, m2 = _net(target_modules=r"blocks\.1\.(key|out)")
    assert m2.vera_modules["default"] == ["blocks.1.key", "blocks.1.out"]
    endings = "its linear layers' names end in: c_fc, classifier, key, out, query, value"
    with pytest.raises(ConfigError, match=r"^target_modules: 'nope' matches no nn.Linear or Conv1D layer of this "
                       rf"model; {endings}$"):
        _net(target_modules=["nope"])


def test_fresh_adapter_is_an_exact_no_op_and_only_vectors_train():
    base, m = _net()
    x = torch.randn(3, 5, 16)
    assert torch.equal(base(x), m(x))
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and all("vera_lambda" in n for n in trainable)
    assert not any("__A__" in k or "vera_A" in k for k in m.state_dict())  # A, B never in the state_dict


@pytest.mark.parametrize("path", ["factored", "fused", "fused_h"])
@pytest.mark.parametrize("layout", ["linear", "conv1d"])
def test_layer_forward_and_backward_match_the_reference(layout, path, monkeypatch):
    """Every autograd path (spec 3.2, 3.4) against vera_ref in float64, within spec 5.2 (float32)."""
    ran = []
    for fn in ("_VeraDeltaMin", "_VeraLinear"):
        real = getattr(F, fn).apply
        monkeypatch.setattr(getattr(F, fn), "apply",  # the fused function's 9th argument: h kept (not x)
                            lambda *a, fn=fn, real=real: ran.append(fn + ("H" if a[8:9] == (True,) else "")) or real(*a))
    torch.manual_seed(1)
    base = nn.Linear(12, 10) if layout == "linear" else Conv1D(10, 12)
    m = get_vera_model(nn.Sequential(base), VeraConfig(r=6, target_modules=["0"], seed=9))
    randomise(m)
    layer = m.base_model[0]
    layer.fused = {"factored": False, "fused": "x", "fused_h": "h"}[path]
    x = torch.randn(4, 3, 12, requires_grad=True)
    y = m(x)
    assert ran == [{"factored": "_VeraDeltaMin", "fused": "_VeraLinear", "fused_h": "_VeraLinearH"}[path]]
    dy = torch.randn_like(y)
    y.backward(dy)
    A, B = vera_ref.projection(9, 6, 12, 10)
    W = layer.base_layer.weight.detach().double().numpy()
    b = layer.base_layer.bias.detach().double().numpy()
    ld = layer.vera_lambda_d["default"].detach().double().numpy()
    lb = layer.vera_lambda_b["default"].detach().double().numpy()
    xs = x.detach().double().numpy()
    ref = vera_ref.forward(xs, W, b, A, B, ld, lb, layout=layout)
    S = forward_magnitude(xs, W, b, A, B, ld, lb, layout=layout)
    sizes = dict(N=12, in_features=12, out_features=10, r=6)  # spec 5.2.3: C from the sums of this layer
    chk = compare(y.detach().numpy(), ref, S, "float32", constant("forward", "float32", **sizes))
    assert chk.ok, chk.describe()
    g = vera_ref.backward(xs, W, A, B, ld, lb, dy.double().numpy(), layout=layout)
    Sg = backward_magnitude(xs, W, A, B, ld, lb, dy.double().numpy(), layout=layout)
    for q, got, want, mag in (("dx", x.grad, g.x, Sg.x),
                              ("d_lambda_d", layer.vera_lambda_d["default"].grad, g.lambda_d, Sg.lambda_d),
                              ("d_lambda_b", layer.vera_lambda_b["default"].grad, g.lambda_b, Sg.lambda_b)):
        chk = compare(got.numpy(), want, mag, "float32", constant(q, "float32", **sizes))
        assert chk.ok, chk.describe()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_base_keeps_float32_vectors(dtype):
    base, m = _net(dtype)
    randomise(m, 0.5)
    assert all(p.dtype == torch.float32 for n, p in m.named_parameters() if "vera_lambda" in n)
    x = torch.randn(2, 4, 16).to(dtype)
    y = m(x)
    assert y.dtype == dtype
    with m.disable_adapter():
        y0 = m(x)
    assert not torch.equal(y, y0)
    y.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in m.parameters() if p.requires_grad)


def _saved_bytes(fn):
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total[0]


def test_layer_keeps_no_more_than_the_chain_of_ops():
    torch.manual_seed(0)
    N, d_in, d_out, r = 256, 64, 64, 128
    x = torch.randn(N, d_in, requires_grad=True)
    A, B = torch.randn(r, d_in), torch.randn(d_out, r)
    ld, lb = torch.randn(r, requires_grad=True), torch.randn(d_out, requires_grad=True)
    ours = _saved_bytes(lambda: F.vera_delta(F.project_in(x, A), ld, lb, B))
    peft_chain = _saved_bytes(lambda: lb * nn.functional.linear(ld * nn.functional.linear(x, A), B))
    assert ours <= peft_chain
    assert ours >= (N * r + N * d_out) * 4  # h and v are what the backward needs


@pytest.mark.parametrize("r", [8, 256])
def test_model_keeps_fewer_activations_than_peft(r):
    """Per model: query and value share one h (small r) or keep no h at all (fused, large r)."""
    peft = pytest.importorskip("peft")
    from torch_models import tiny_bert
    base = tiny_bert()
    emb = torch.randn(4, 16, 32, requires_grad=True)
    ours = get_vera_model(copy.deepcopy(base), VeraConfig(r=r, target_modules=["query", "value"]))
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.VeraConfig(r=r, target_modules=["query", "value"]))
    run = lambda m: m(inputs_embeds=emb).logits.sum()  # noqa: E731
    assert _saved_bytes(lambda: run(ours)) < _saved_bytes(lambda: run(theirs))


def test_path_choice_follows_the_flop_count():
    # RoBERTa-base q/v, 1024 rows: r = 1024 fuses, r = 256 stays factored; one row never fuses
    assert F.choose_path(1024, 1024, 768, 768, training=True) == "fused"
    assert F.choose_path(1024, 256, 768, 768, training=True) == "fused_h"  # keeps h: 1207M vs 1608M per q/v pair
    assert F.choose_path(1024, 256, 768, 768, training=True, minimal=True) == "fused_h"
    assert F.choose_path(16, 256, 768, 768, training=True) == "factored"  # few rows: forming Delta W costs more
    assert F.choose_path(16, 256, 768, 768, training=True, fused_only=True) == "fused_h"  # layer.fused = True
    assert F.choose_path(1024, 1024, 768, 768, training=True, minimal=True) == "fused"  # x (3 MB) < h (4 MB)
    assert F.choose_path(1, 1024, 768, 768, training=False) == "factored"
    _, m = _net64()
    randomise(m)
    x = torch.randn(2, 3, 16, dtype=torch.float64)
    layer = m.base_model.blocks[0].query
    layer.fused = False
    y_f = m(x)
    layer.fused = True
    assert _close64(m(x), y_f)  # ATOL64: float64, one function


def test_query_key_value_share_one_input_projection(monkeypatch):
    base, m = _net64(target_modules=["query", "key", "value"])
    randomise(m)
    calls = []
    real = F._ProjectIn.apply
    monkeypatch.setattr(F._ProjectIn, "apply", staticmethod(lambda *a: calls.append(1) or real(*a)))
    x = torch.randn(2, 3, 16, dtype=torch.float64, requires_grad=True)
    y = m(x)
    assert len(calls) == 2  # one per block, not one per layer
    y.sum().backward()
    g_shared = [p.grad.clone() for p in m.parameters() if p.requires_grad] + [x.grad.clone()]
    # the same model with every layer computing its own x A^T
    m.zero_grad()
    x.grad = None
    monkeypatch.setattr(VeraLayer, "_once", lambda self, x_, key, make: make())
    y2 = m(x)
    y2.sum().backward()
    g_plain = [p.grad.clone() for p in m.parameters() if p.requires_grad] + [x.grad.clone()]
    assert _close64(y, y2)  # ATOL64: float64, one function (gradients: |g| ~ 10 here, the same bound)
    assert all(_close64(a, b) for a, b in zip(g_shared, g_plain))


def test_dropout_is_on_the_adapter_input_only():
    base, m = _net(dropout=0.5)
    x = torch.randn(2, 3, 16)
    m.train()
    assert torch.equal(m(x), base.train()(x))  # lambda_b = 0: dropout cannot reach the output
    randomise(m)
    m.eval()
    _, m_nodrop = _net()
    m_nodrop.load_state_dict(m.state_dict())
    assert torch.equal(m(x), m_nodrop.eval()(x))  # eval: dropout is the identity


def test_adapters_with_different_ranks_lower_after_higher():
    """PEFT crashes when a second adapter has a lower r; here each keeps its own projections."""
    base, m = _net(r=16)
    m.add_adapter("small", VeraConfig(r=4, target_modules=["query", "value", "c_fc"], seed=5))
    m.double()
    base.double()
    randomise(m)
    x = torch.randn(2, 3, 16, dtype=torch.float64)
    outs = {}
    for name in ("default", "small"):
        m.set_adapter(name)
        outs[name] = m(x)
        cfg = VeraConfig(r=m.vera_configs[name].r, target_modules=["query", "value", "c_fc"], seed=5)
        alone = get_vera_model(copy.deepcopy(base), cfg).double()
        sd = {k.replace(f".{name}", ".default"): v for k, v in m.state_dict().items() if f".{name}" in k}
        alone.load_state_dict(sd, strict=False)
        assert _close64(outs[name], alone(x))  # ATOL64: float64, one function
    assert not torch.allclose(outs["default"], outs["small"])


def test_mixed_adapters_in_one_batch_equal_each_row_alone():
    base, m = _net(modules_to_save=["classifier"])
    m.add_adapter("b", VeraConfig(r=4, target_modules=["query", "value"], seed=77, modules_to_save=["classifier"]))
    m.double()
    randomise(m)
    with torch.no_grad():
        m.base_model.classifier.copies["b"].weight.mul_(-1)
    x = torch.randn(5, 3, 16, dtype=torch.float64)
    ids = ["default", "b", None, "b", "default"]
    mixed = m(x, adapter_ids=ids)
    for i, name in enumerate(ids):
        if name is None:
            with m.disable_adapter():
                want = m(x[i:i + 1])
        else:
            m.set_adapter(name)
            want = m(x[i:i + 1])
        assert _close64(mixed[i:i + 1], want), i  # ATOL64: float64, one function; a wrong row is O(1) off
    with pytest.raises(AdapterNameError, match="^no adapter named 'zzz'"):
        m(x, adapter_ids=["zzz"] * 5)
    with pytest.raises(BatchError, match=r"^adapter_ids has 2 entries but this layer's input has 5 rows"):
        m(x, adapter_ids=["b", "b"])


def test_merge_unmerge_and_merge_and_unload_with_a_task_head():
    """PEFT's merge_and_unload fails with a trained head in modules_to_save; here it is kept."""
    base, m = _net64(modules_to_save=["classifier"])
    randomise(m)
    with torch.no_grad():
        m.base_model.classifier.copies["default"].bias.add_(1.0)
    x = torch.randn(3, 4, 16, dtype=torch.float64)
    y = m(x)
    m.merge()  # below, ATOL64: float64, one function (merged weights: the same sums, spec 5.2.3)
    assert _close64(m(x), y)
    with m.disable_adapter():
        assert _close64(m(x), base(x))
    assert _close64(m(x), y)
    m.unmerge()
    assert _close64(m(x), y)
    plain = m.merge_and_unload()
    assert type(plain.blocks[0].query) is nn.Linear and type(plain.classifier) is nn.Linear
    assert _close64(plain(x), y)
    assert torch.equal(plain.classifier.bias, base.classifier.bias + 1.0)


def test_save_load_round_trip_and_fresh_process_bit_identical(tmp_path):
    base, m = _net(modules_to_save=["classifier"], vector_dtype="bfloat16")
    randomise(m)
    x = torch.randn(2, 3, 16, generator=torch.Generator().manual_seed(3))
    torch.save({"base": base.state_dict(), "x": x}, tmp_path / "base.pt")
    path = tmp_path / "a.safetensors"
    m.save_adapter(path)
    y = m(x)
    torch.save(y, tmp_path / "y.pt")
    ad = vera_ref.load_adapter(path)
    assert ad.config.vector_dtype == "bfloat16" and set(ad.extra) == {"classifier.weight", "classifier.bias"}
    assert "fingerprint" in ad.config.base_model
    code = f"""
import sys, torch
sys.path[:0] = [{str(ROOT / 'tests')!r}]
from torch_models import TinyNet
from vera_torch import VeraModel
d = torch.load({str(tmp_path / 'base.pt')!r})
net = TinyNet(); net.load_state_dict(d['base'])
m = VeraModel.from_adapter(net, {str(path)!r})
print(torch.equal(m(d['x']), torch.load({str(tmp_path / 'y.pt')!r})))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "True", out.stderr


def test_vectors_stored_rounded_and_held_in_float32(tmp_path):
    base, m = _net()
    randomise(m)
    m.save_adapter(tmp_path / "a.safetensors", vector_dtype="bfloat16", packed=True)
    ad = vera_ref.load_adapter(tmp_path / "a.safetensors")
    assert ad.config.vector_dtype == "bfloat16" and ad.config.tensor_layout == "packed"
    held = VeraModel.from_adapter(copy.deepcopy(base), tmp_path / "a.safetensors", vector_dtype="float32")
    same = VeraModel.from_adapter(copy.deepcopy(base), tmp_path / "a.safetensors")
    for name in m.vera_modules["default"]:
        want = m.base_model.get_submodule(name).vera_lambda_b["default"].detach().to(torch.bfloat16)
        got = held.base_model.get_submodule(name).vera_lambda_b["default"]
        assert got.dtype == torch.float32 and torch.equal(got, want.float())  # bfloat16 values, exactly
        assert same.base_model.get_submodule(name).vera_lambda_b["default"].dtype == torch.bfloat16


def test_loading_refuses_a_model_it_does_not_fit(tmp_path):
    base, m = _net()
    path = tmp_path / "a.safetensors"
    m.save_adapter(path)
    other = TinyNet(d=16, d_ff=32)
    with pytest.raises(ModelMismatchError, match=r"^modules: 'blocks.0.c_fc' is \(in=16, out=32, conv1d\) in this "
                                                 r"model but \(in=16, out=24, conv1d\) in the adapter$"):
        VeraModel.from_adapter(other, path)
    with pytest.raises(ModelMismatchError, match=r"^modules: 'blocks.0.query' is not in this model$"):
        VeraModel.from_adapter(nn.Sequential(nn.Linear(16, 16)), path)
    changed = copy.deepcopy(base)
    with torch.no_grad():
        changed.blocks[1].value.weight.add_(1e-3)
    with pytest.raises(ModelMismatchError, match=r"^base_model.fingerprint: this model's weights give [0-9a-f]{16}\.\.\., "
                                                 r"the adapter was trained on [0-9a-f]{16}\.\.\.$"):
        VeraModel.from_adapter(changed, path)
    assert VeraModel.from_adapter(changed, path, check_fingerprint=False).adapters == ["default"]


def test_stored_and_per_module_generators(tmp_path):
    for kw in (dict(generator="stored"), dict(sharing="per-module"), dict(generator="peft-mt19937")):
        base, m = _net(**kw)
        randomise(m)
        x = torch.randn(2, 3, 16)
        m.save_adapter(tmp_path / "a.safetensors")
        m2 = VeraModel.from_adapter(copy.deepcopy(base), tmp_path / "a.safetensors")
        assert torch.equal(m(x), m2(x)), kw
        has_ab = any("__A__" in k for k in m.state_dict())
        assert has_ab == (kw.get("generator") == "stored")


def test_switching_adapters_and_errors():
    base, m = _net()
    with pytest.raises(AdapterNameError, match="^adapter 'default' already exists$"):
        m.add_adapter("default", VeraConfig(r=2, target_modules=["query"]))
    with pytest.raises(AdapterNameError, match=r"^no adapter named 'x' \(have: default\)$"):
        m.set_adapter("x")
    m.add_adapter("two", VeraConfig(r=2, target_modules=["query"], seed=1))
    m.set_adapter("two")
    assert {n for n, p in m.named_parameters() if p.requires_grad} == {
        f"base_model.blocks.{i}.query.vera_lambda_{v}.two" for i in range(2) for v in "db"}
    m.delete_adapter("two")
    assert m.adapters == ["default"]


def test_torch_compile_matches_eager():
    base, m = _net64()
    randomise(m)
    x = torch.randn(2, 3, 16, dtype=torch.float64)
    y_eager = m(x)
    y_eager.sum().backward()
    g_eager = [p.grad.clone() for p in m.parameters() if p.requires_grad]
    m.zero_grad()
    y_comp = torch.compile(m)(x)
    y_comp.sum().backward()
    assert _close64(y_comp, y_eager)  # ATOL64: float64, one function (compiled kernels: other orders, fma)
    assert all(_close64(p.grad, g) for p, g in zip((p for p in m.parameters() if p.requires_grad), g_eager))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_model_matches_cpu():
    base, m = _net64()
    randomise(m)
    x = torch.randn(2, 3, 16, dtype=torch.float64)
    y = m(x)
    m.cuda()
    assert _close64(m(x.cuda()).cpu(), y)  # ATOL64: float64 (no TF32), one function
