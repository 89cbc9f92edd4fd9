"""Merge, unmerge and disable_adapter restore the original weights bit for bit, or the merge is refused
with the weights untouched (spec 3.5, 3.6; issue: extreme numbers)."""
import copy

import pytest

torch = pytest.importorskip("torch")

from torch_models import TinyNet  # noqa: E402
from vera_torch import MergeError, VeraConfig, VeraLayer, get_vera_model  # noqa: E402

_BITS = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def _weights(m):
    return {n: p.detach().clone() for n, p in m.base_model.named_parameters() if "vera_lambda" not in n}


def _same_bits(a, b):
    return all(torch.equal(a[k].view(_BITS[a[k].dtype]), b[k].view(_BITS[b[k].dtype])) for k in a)


def _model(dtype, delta_max):
    """TinyNet in ``dtype`` with one adapter whose largest |Delta W| entry is ``delta_max``."""
    torch.manual_seed(0)
    m = get_vera_model(TinyNet().to(dtype), VeraConfig(r=8, target_modules=["query", "value", "c_fc"], seed=5))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "vera_lambda" in n:
                p.copy_(torch.randn(p.shape, generator=g))
        big = max(float(layer.delta_weight("default").abs().max()) for layer in m.vera_layers())
        for layer in m.vera_layers():
            layer.vera_lambda_b["default"].mul_(delta_max / big)
    return m


@pytest.mark.parametrize("delta_max", [1.0, 1e4, 1e5, 1e60])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_one_hundred_cycles_restore_the_original_weights_bit_for_bit(dtype, delta_max):
    m = _model(dtype, delta_max)
    w0 = _weights(m)
    # 1e60 overflows float32 itself (Delta W is formed in float32); 1e5 overflows float16 (max 65504)
    refused = delta_max == 1e60 or (delta_max == 1e5 and dtype == torch.float16)
    x = torch.randn(2, 3, 16).to(dtype)
    with m.disable_adapter():
        y0 = m(x)
    for _ in range(100):
        try:
            m.merge()
        except MergeError as e:
            assert refused, str(e)
            assert _same_bits(_weights(m), w0) and not any(layer.merged for layer in m.vera_layers())
            continue
        assert not refused
        assert not _same_bits(_weights(m), w0)  # the merge did change the weights
        assert all(torch.isfinite(w).all() for w in _weights(m).values())
        with m.disable_adapter():
            assert _same_bits(_weights(m), w0)
        m.unmerge()
        assert _same_bits(_weights(m), w0)
        assert all(layer.vera_w0 is None for layer in m.vera_layers())  # the copy is freed
    if not refused:
        m.merge()
    with m.disable_adapter():  # the base model, bit for bit, merged or not
        assert torch.equal(m(x), y0)


def test_a_refused_merge_rolls_back_the_layers_merged_before_it():
    m = _model(torch.float16, 1.0)
    with torch.no_grad():
        m.base_model.blocks[1].c_fc.vera_lambda_b["default"].mul_(1e6)  # only the last layer overflows
    w0 = _weights(m)
    with pytest.raises(MergeError, match=r"^blocks\.1\.c_fc: merging 'default' would make the \(16, 24\) "
                                         r"weight non-finite in float16; the weights are unchanged$") as e:
        m.merge()
    assert isinstance(e.value, RuntimeError)
    assert _same_bits(_weights(m), w0) and not any(layer.merged for layer in m.vera_layers())


def test_nested_disable_stays_disabled_until_the_outer_block_ends():
    m = _model(torch.float32, 1.0)
    x = torch.randn(2, 3, 16)
    y = m(x)
    m.merge()
    with m.disable_adapter():
        y0 = m(x)
        with m.disable_adapter():
            assert torch.equal(m(x), y0)
        assert torch.equal(m(x), y0)
    assert torch.allclose(m(x), y, atol=1e-5) and not torch.equal(m(x), y0)


def test_fingerprint_and_loading_work_while_merged(tmp_path):
    m = _model(torch.float32, 1.0)
    before = m.base_fingerprint()
    m.save_adapter(tmp_path / "a.safetensors")
    m.merge()
    assert m.base_fingerprint() == before  # from the kept W0
    m.load_adapter(tmp_path / "a.safetensors", "again", activate=False)  # fingerprint checked against W0
    with pytest.raises(MergeError, match=r"^another adapter is merged; unmerge\(\) before loading"):
        m.load_adapter(tmp_path / "a.safetensors", "third")
    assert m.adapters == ["default", "again"]


def test_two_merged_adapters_and_unmerge_of_one():
    m = _model(torch.bfloat16, 1.0)
    m.add_adapter("b", VeraConfig(r=4, target_modules=["query"], seed=9))
    with torch.no_grad():
        for layer in m.vera_layers():
            if "b" in layer.proj:
                layer.vera_lambda_b["b"].fill_(0.5)
    w0 = _weights(m)
    m.merge("default")
    one = _weights(m)
    m.merge("b")
    q = m.base_model.blocks[0].query
    assert q.merged == ["default", "b"]
    q.unmerge("b")  # back to W0 + Delta W(default), rounded once: the same bits as after the first merge
    assert torch.equal(q.weight.view(torch.int16), one["blocks.0.query.base_layer.weight"].view(torch.int16))
    m.unmerge()
    assert _same_bits(_weights(m), w0)


def test_model_cast_while_merged_restores_the_cast_original():
    m = _model(torch.float32, 1.0)
    w0 = {k: v.to(torch.bfloat16) for k, v in _weights(m).items()}
    m.merge()
    m.to(torch.bfloat16)  # the kept W0 is cast with the model
    m.unmerge()
    assert _same_bits(_weights(m), w0)
    assert isinstance(m.base_model.blocks[0].query, VeraLayer)
    assert copy.deepcopy(m).adapters == ["default"]
