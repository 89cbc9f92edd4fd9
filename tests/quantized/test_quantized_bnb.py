"""VeRA on bitsandbytes 4-bit and 8-bit bases (spec 7; issue 28): train, save, reload, merge, unmerge.

Every layer here is small (64 -> 48): the whole file runs in seconds on one CPU thread."""
import copy
import math

import pytest

torch = pytest.importorskip("torch")
try:
    import bitsandbytes as bnb  # noqa: E402
except Exception as e:  # noqa: BLE001 - a broken native library raises more than ImportError
    pytest.skip(f"bitsandbytes cannot load here ({type(e).__name__}: {str(e)[:120]}); "
                f"install the quant extra: pip install -c constraints.txt -e '.[quant]'", allow_module_level=True)
from torch import nn  # noqa: E402

from vera_ref.errors import ModelMismatchError  # noqa: E402
from vera_torch import VeraConfig, get_vera_model  # noqa: E402
from vera_torch.model import VeraModel  # noqa: E402
from vera_torch import quantized as Q  # noqa: E402

IN, OUT = 64, 48
EPS32 = 2.0 ** -24  # unit roundoff of binary32


def dense(seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(IN, OUT)


def linear4(quant_type="nf4", nested=False, compute=torch.float32, seed=0) -> nn.Module:
    q = bnb.nn.Linear4bit(IN, OUT, compute_dtype=compute, compress_statistics=nested, quant_type=quant_type)
    q.load_state_dict(dense(seed).state_dict())
    return q.to("cpu")  # bitsandbytes quantizes on the move


def linear8(seed=0) -> nn.Module:
    q = bnb.nn.Linear8bitLt(IN, OUT, has_fp16_weights=False)
    q.load_state_dict(dense(seed).state_dict())
    return q.to("cpu")


def net(layer: nn.Module) -> nn.Sequential:
    return nn.Sequential(layer, nn.Tanh(), nn.Linear(OUT, 4))


def held_bytes(layer: nn.Module) -> list[torch.Tensor]:
    """Every tensor of the quantized weight, as stored (spec 7.2)."""
    base = layer.base_layer if hasattr(layer, "base_layer") else layer
    w = base.weight
    if type(w).__name__ == "Params4bit":
        qs = w.quant_state
        out = [w.data, qs.absmax, qs.code]
        return out + ([qs.offset, qs.state2.absmax, qs.state2.code] if qs.nested else [])
    scb = w.SCB if w.SCB is not None else base.state.SCB
    return [w.data, scb]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(x.dtype == y.dtype and torch.equal(x, y) for x, y in zip(a, b))


def trained(model: VeraModel, steps: int = 3, seed: int = 1) -> torch.Tensor:
    """A few AdamW steps; returns the input batch used."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, IN, generator=g)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    for _ in range(steps):
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return x


SCHEMES_4 = [(qt, nested, cd) for qt in ("nf4", "fp4") for nested in (False, True)
             for cd in (torch.float32, torch.bfloat16, torch.float16)]


@pytest.mark.parametrize("quant_type,nested,compute", SCHEMES_4)
def test_a_4bit_base_is_adapted_by_its_logical_shape_frozen_and_trained_through_its_compute_dtype(
        quant_type, nested, compute):
    q = linear4(quant_type, nested, compute)
    before = [t.clone() for t in held_bytes(q)]
    m = get_vera_model(nn.Sequential(q), VeraConfig(r=8, target_modules=["0"], seed=5))
    layer = m.base_model[0]
    assert (layer.in_features, layer.out_features) == (IN, OUT)
    assert [n for n, p in m.named_parameters() if p.requires_grad] == [
        "base_model.0.vera_lambda_d.default", "base_model.0.vera_lambda_b.default"]
    # the twin: the same adapter on nn.Linear(W0 dequantized): the lambda gradients of a loss linear in
    # y depend on x and dL/dy only, so they must be the same bits whatever the base computes
    twin_base = nn.Linear(IN, OUT)
    with torch.no_grad():
        twin_base.weight.copy_(Q.dequantize(q))
        twin_base.bias.copy_(q.bias)
    twin = get_vera_model(nn.Sequential(twin_base), VeraConfig(r=8, target_modules=["0"], seed=5))
    twin.base_model[0].fused = False
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for mm in (m, twin):
            mm.base_model[0].vera_lambda_b["default"].copy_(torch.randn(OUT, generator=torch.Generator().manual_seed(3)))
    x = torch.randn(8, IN, generator=g, requires_grad=True)
    gy = torch.randn(8, OUT, generator=g)
    (m(x) * gy).sum().backward()
    (twin(x.detach()) * gy).sum().backward()
    for name in ("vera_lambda_d", "vera_lambda_b"):
        a, b = getattr(layer, name)["default"].grad, getattr(twin.base_model[0], name)["default"].grad
        assert torch.equal(a, b), name
    assert x.grad is not None and torch.isfinite(x.grad).all()  # through the base's compute dtype
    # the adapter term added to the base output is the twin's (x float32, y float32: one rounding of the sum)
    with torch.no_grad():
        xd = x.detach()
        t_q = m(xd) - q(xd)
        t_f = twin(xd) - twin_base(xd)
        y = m(xd).abs() + twin(xd).abs()
        assert bool(((t_q - t_f).abs() <= 2 * EPS32 * y).all())
    trained(m)
    assert same(held_bytes(q), before)  # frozen: the quantized bytes never move


def test_an_8bit_base_is_adapted_frozen_and_trained():
    q = linear8()
    before = [t.clone() for t in held_bytes(q)]
    m = get_vera_model(net(q), VeraConfig(r=8, target_modules=["0"], seed=5))
    d0 = m.base_model[0].vera_lambda_b["default"].detach().clone()
    trained(m)
    assert not torch.equal(m.base_model[0].vera_lambda_b["default"], d0)
    assert same(held_bytes(m.base_model[0]), before)


@pytest.mark.parametrize("make", [lambda: linear4("nf4", True), linear8], ids=["nf4", "int8"])
def test_save_then_reload_on_the_same_quantized_checkpoint_is_bit_identical(make, tmp_path):
    base = net(make())
    fresh = copy.deepcopy(base)
    m = get_vera_model(base, VeraConfig(r=8, target_modules=["0"], seed=5))
    x = trained(m)
    f = tmp_path / "a.safetensors"
    m.save_adapter(f)
    m2 = VeraModel.from_adapter(fresh, f)  # checks the fingerprint (spec 7.2): the same quantized bytes
    for v in ("vera_lambda_d", "vera_lambda_b"):
        assert torch.equal(getattr(m.base_model[0], v)["default"], getattr(m2.base_model[0], v)["default"])
    m.eval(), m2.eval()
    with torch.no_grad():
        assert torch.equal(m(x), m2(x))
    # the same spec file as on a full-precision base: the vectors and modules, only the fingerprint and
    # the provenance's record of the scheme differ (spec 7.3)
    ad, ad_q = m2.to_adapter(), m.to_adapter()
    assert ad_q.config.provenance[Q.PROVENANCE_KEY] == [Q.scheme(m.base_model[0])]
    assert [(s.name, s.in_features, s.out_features) for s in ad.config.modules] == [("0", IN, OUT)]


def test_the_fingerprint_refuses_another_quantized_checkpoint_of_the_same_scheme(tmp_path):
    m = get_vera_model(net(linear4("nf4", False, seed=0)), VeraConfig(r=8, target_modules=["0"], seed=5))
    trained(m)
    f = tmp_path / "a.safetensors"
    m.save_adapter(f)
    other = net(linear4("nf4", False, seed=7))  # other weights: other 4-bit bytes
    with pytest.raises(ModelMismatchError, match="base_model.fingerprint"):
        VeraModel.from_adapter(other, f)


def test_a_file_from_a_quantized_base_loads_on_a_full_precision_one_with_the_documented_warning(tmp_path):
    m = get_vera_model(net(linear4("nf4", True)), VeraConfig(r=8, target_modules=["0"], seed=5))
    trained(m)
    f = tmp_path / "a.safetensors"
    m.save_adapter(f)
    full = net(dense(0))
    with pytest.warns(Q.QuantizedBaseWarning, match="bnb-nf4 base"):
        m2 = VeraModel.from_adapter(full, f)
    assert torch.equal(m2.base_model[0].vera_lambda_b["default"], m.base_model[0].vera_lambda_b["default"])
    # and back: a full-precision file on the quantized base
    g = tmp_path / "b.safetensors"
    m2.save_adapter(g)
    assert Q.PROVENANCE_KEY not in m2.to_adapter().config.provenance
    with pytest.warns(Q.QuantizedBaseWarning, match="full precision base"):
        VeraModel.from_adapter(net(linear4("nf4", True)), g)


@pytest.mark.parametrize("make", [lambda: linear4("nf4", False), lambda: linear4("fp4", True, torch.bfloat16),
                                  linear8], ids=["nf4", "fp4-nested-bf16", "int8"])
def test_merge_reports_the_output_change_on_the_probe_refuses_above_the_bound_and_unmerges_to_the_same_bytes(make):
    m = get_vera_model(net(make()), VeraConfig(r=8, target_modules=["0"], seed=5))
    x = trained(m)
    layer = m.base_model[0]
    w_before, before = layer.base_layer.weight, [t.clone() for t in held_bytes(layer)]
    fp = m.base_fingerprint()
    with torch.no_grad():
        y_unmerged = m(x)
        probe = torch.randn(Q.PROBE_ROWS, IN, generator=torch.Generator().manual_seed(Q.PROBE_SEED))
        want = layer.base_layer(probe).float() + Q._adapter_term(layer, ["default"], probe)
    # a bound below any requantization error: refused, the weights untouched (the same objects and bytes)
    with pytest.raises(Q.RequantizationError, match="^0: requantizing the bnb-.* weights are unchanged"):
        m.merge(max_output_change=0.0)
    assert layer.merged == [] and layer.base_layer.weight is w_before and same(held_bytes(layer), before)
    m.merge(max_output_change=math.inf)
    rep = layer.merge_report
    with torch.no_grad():
        got = layer.base_layer(probe).float()
    assert rep["requantized"] and rep["probe_rows"] == Q.PROBE_ROWS
    assert rep["max_output_change"] == float((got - want).abs().max())  # what was reported is what happened
    assert rep["max_output_change"] > 0
    assert not same(held_bytes(layer), before)  # merged into the quantized bytes
    assert m.base_fingerprint() == fp  # spec 7.2: of the original quantized weight, also while merged
    m.unmerge()
    assert layer.base_layer.weight is w_before and same(held_bytes(layer), before)
    with torch.no_grad():
        assert torch.equal(m(x), y_unmerged)


def test_merging_an_untrained_adapter_leaves_the_quantized_bytes_as_they_are():
    m = get_vera_model(net(linear4("nf4", True)), VeraConfig(r=8, target_modules=["0"], seed=5))
    before = [t.clone() for t in held_bytes(m.base_model[0])]
    m.merge()  # lambda_b = 0: Delta W = 0, nothing to requantize, bound 0 met
    assert m.base_model[0].merge_report["max_output_change"] == 0.0
    assert same(held_bytes(m.base_model[0]), before)


def test_merge_and_unload_without_a_kept_original_cannot_be_unmerged_and_with_dtype_gives_full_precision():
    m = get_vera_model(net(linear4("nf4", False)), VeraConfig(r=8, target_modules=["0"], seed=5))
    trained(m)
    layer = m.base_model[0]
    W0 = Q.dequantize(layer)
    dW = layer.delta_weight("default").float()
    c = copy.deepcopy(m)
    out = c.merge_and_unload(dtype=torch.float32)  # spec 7.6: W0 dequantized + Delta W, one rounding
    assert type(out[0]) is nn.Linear and out[0].weight.dtype == torch.float32
    assert torch.equal(out[0].weight, W0 + dW)
    assert not any(Q.kind(mod) for mod in out.modules())
    m.merge(restore="none", max_output_change=math.inf)
    with pytest.raises(Q.MergeError, match="restore='none'"):
        m.unmerge()


def test_a_linear4bit_that_is_not_quantized_yet_is_refused_clearly():
    q = bnb.nn.Linear4bit(IN, OUT, quant_type="nf4")  # not moved: bitsandbytes has not quantized it
    with pytest.raises(Q.QuantizedLayerError, match="not quantized yet"):
        get_vera_model(nn.Sequential(q), VeraConfig(r=8, target_modules=["0"], seed=5))


def test_bfloat16_activations_run_through_a_bfloat16_compute_base():
    m = get_vera_model(net(linear4("nf4", True, torch.bfloat16)).to(torch.bfloat16),
                       VeraConfig(r=8, target_modules=["0"], seed=5))
    x = torch.randn(4, IN, dtype=torch.bfloat16)
    y = m(x)
    y.float().sum().backward()
    assert y.dtype == torch.bfloat16 and m.base_model[0].vera_lambda_d["default"].grad is not None


@pytest.mark.parametrize("factory", ["make", "make_peft"])
def test_the_kits_quantized_check_passes_vera_torch_and_peft_on_bitsandbytes_bases(factory):
    from vera_conformance import checks_quantized as CQ
    from vera_conformance.impls import torch_quantized_impl as TQ
    if factory == "make_peft":
        pytest.importorskip("peft")
    impl = getattr(TQ, factory)()
    out = CQ.check_quantized(impl, "cpu", "float32", 8)
    assert out.status == "passed", out.reason
    assert out.examples >= len(CQ.EXPLICIT) and 0 < out.worst_ratio <= 1.0


def test_an_accepted_merge_survives_disable_adapter_and_the_bound_stays_the_layers():
    m = get_vera_model(net(linear4("nf4", False)), VeraConfig(r=8, target_modules=["0"], seed=5))
    x = trained(m)
    layer = m.base_model[0]
    with pytest.raises(Q.RequantizationError):
        m.merge(max_output_change=0.0)
    assert layer.max_output_change == 0.0
    before = [t.clone() for t in held_bytes(layer)]
    m.merge(max_output_change=math.inf)
    merged = [t.clone() for t in held_bytes(layer)]
    with torch.no_grad():
        y = m(x)
        with m.disable_adapter():  # unmerged for the block (the original bytes), merged again after
            assert same(held_bytes(layer), before)
        assert layer.merged == ["default"] and same(held_bytes(layer), merged) and torch.equal(m(x), y)


def spec72_from_checkpoint(name: str, sd: dict) -> str:
    """spec 7.2 written out from the serialized bitsandbytes checkpoint (its state_dict and the JSON
    blob it stores the quantization state in), not from vera_torch's code."""
    import hashlib
    import json
    if "SCB" in sd:  # int8: CB and SCB
        return hashlib.sha256(name.encode() + b"\0" + f"bnb-int8;shape={OUT}x{IN}".encode() + b"\0"
                              + sd["weight"].numpy().tobytes() + sd["SCB"].numpy().astype("<f4").tobytes()).hexdigest()
    blob = next(k for k in sd if ".quant_state.bitsandbytes__" in k or k.startswith("weight.quant_state."))
    st = json.loads(bytes(sd[blob].tolist()))
    nested = "nested_blocksize" in st
    desc = (f"bnb-{st['quant_type']};blocksize={st['blocksize']};shape={st['shape'][0]}x{st['shape'][1]};"
            f"storage=uint8;nested={int(nested)}" + (f";nested_blocksize={st['nested_blocksize']}" if nested else ""))
    le = lambda t: t.numpy().astype(t.numpy().dtype.newbyteorder("<")).tobytes()  # noqa: E731
    parts = [sd["weight"], sd["weight.absmax"], sd["weight.quant_map"]]
    if nested:
        parts += [torch.tensor([st["nested_offset"]], dtype=torch.float32), sd["weight.nested_absmax"],
                  sd["weight.nested_quant_map"]]
    h = hashlib.sha256(name.encode() + b"\0" + desc.encode() + b"\0" + b"".join(le(p) for p in parts))
    return h.hexdigest()


@pytest.mark.parametrize("quant_type,nested", [("nf4", True), ("fp4", False)])
def test_the_fingerprint_is_spec_7_2_of_the_checkpoint_and_a_reloaded_checkpoint_is_recognised(quant_type, nested,
                                                                                                 tmp_path):
    q = linear4(quant_type, nested)
    sd = {k: v.clone() for k, v in q.state_dict().items()}
    m = get_vera_model(nn.Sequential(q), VeraConfig(r=8, target_modules=["0"], seed=5))
    assert m.base_fingerprint() == spec72_from_checkpoint("0", sd)
    # the checkpoint loaded back as bitsandbytes loads a pre-quantized model: the same fingerprint
    stats = {k[len("weight."):]: v for k, v in sd.items() if k.startswith("weight.")}
    q2 = bnb.nn.Linear4bit(IN, OUT, quant_type=quant_type, compress_statistics=nested)
    q2.weight = bnb.nn.Params4bit.from_prequantized(data=sd["weight"], quantized_stats=stats, device="cpu")
    q2.bias = nn.Parameter(sd["bias"], requires_grad=False)
    trained(m)
    f = tmp_path / "a.safetensors"
    m.save_adapter(f)
    m2 = VeraModel.from_adapter(nn.Sequential(q2), f)  # no warning, no mismatch
    assert m2.base_fingerprint() == m.base_fingerprint()


def test_the_fingerprint_of_an_int8_base_is_spec_7_2_of_its_checkpoint():
    q = linear8()
    sd = {k: v.clone() for k, v in q.state_dict().items()}
    m = get_vera_model(nn.Sequential(q), VeraConfig(r=8, target_modules=["0"], seed=5))
    trained(m)  # forward moves SCB into the layer's state: still the same fingerprint
    assert m.base_fingerprint() == spec72_from_checkpoint("0", sd)


def test_a_second_adapter_merged_on_top_of_a_merge_that_kept_nothing_is_added_once():
    m = get_vera_model(net(linear4("nf4", False)), VeraConfig(r=8, target_modules=["0"], seed=5))
    m.add_adapter("other", VeraConfig(r=4, target_modules=["0"], seed=9))
    layer = m.base_model[0]
    with torch.no_grad():
        for n in ("default", "other"):
            layer.vera_lambda_b[n].copy_(torch.full((OUT,), 0.5))
    m.merge("default", restore="none", max_output_change=math.inf)
    held1 = Q._held(layer.base_layer)  # the weight with "default" merged: the base of the next merge
    m.merge("other", restore="none")
    rep = layer.merge_report
    with torch.no_grad():
        probe = torch.randn(Q.PROBE_ROWS, IN, generator=torch.Generator().manual_seed(Q.PROBE_SEED))
        got = layer.base_layer(probe).float()
        held2 = Q._held(layer.base_layer)
        Q._put(layer.base_layer, held1)
        want = layer.base_layer(probe).float() + Q._adapter_term(layer, ["other"], probe)  # "default" once
        Q._put(layer.base_layer, held2)
    assert rep["max_output_change"] == float((got - want).abs().max())
    assert layer.merged == ["default", "other"]
