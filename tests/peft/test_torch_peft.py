"""PEFT interop both ways on real transformers models built from configs (DESIGN 5)."""
import copy
import json
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
pytest.importorskip("transformers")

from conftest import ROOT  # noqa: E402
from torch_models import randomise, tiny_bert, tiny_gpt2  # noqa: E402
from vera_ref.errors import ConversionError  # noqa: E402
from vera_ref.peft_interop import peft_to_adapter  # noqa: E402
from vera_torch import VeraConfig, VeraModel, get_vera_model  # noqa: E402


# PEFT and ours compute one function of a tiny float64 BERT or GPT-2 (2 layers, width <= 48) in other
# orders: ~(terms + ops on a value's way, < 400) * 2^-53 * S per layer, times the gains of LayerNorm,
# softmax and gelu (each < 10 here): under 1e-11 of the logits' scale on any BLAS or thread count;
# another projection or a wrong layout moves the logits by > 1e-3 of it.
REL64 = 1e-9


def _logits64(model, ids):
    """The logits of a float64 copy of ``model`` (its float32 values widened exactly)."""
    return copy.deepcopy(model).double().eval()(input_ids=ids).logits


def _close64(got, want):
    assert got.dtype == want.dtype == torch.float64
    return (got - want).abs().max().item() <= REL64 * max(1.0, want.abs().max().item())


def _peft_model(base, **kw):
    pm = peft.get_peft_model(copy.deepcopy(base), peft.VeraConfig(**kw))
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "vera_lambda" in n or "modules_to_save" in n:
                p.copy_(torch.randn(p.shape, generator=g))
    return pm.eval()


@pytest.mark.parametrize("save_projection", [False, True])
def test_peft_bert_checkpoint_into_ours(tmp_path, save_projection):
    base = tiny_bert()
    pm = _peft_model(base, r=8, target_modules=["query", "value"], projection_prng_key=11,
                     save_projection=save_projection, modules_to_save=["classifier"])
    ids = torch.randint(0, 100, (3, 9), generator=torch.Generator().manual_seed(0))
    want = _logits64(pm, ids)
    pm.save_pretrained(tmp_path / "peft")
    ours = VeraModel.from_peft(copy.deepcopy(base), tmp_path / "peft").eval()
    assert _close64(_logits64(ours, ids), want)  # REL64
    assert ours.vera_configs["default"].generator == "peft-mt19937"  # PEFT's own draws: seed only
    ours.save_adapter(tmp_path / "ours.safetensors")
    size_ours = (tmp_path / "ours.safetensors").stat().st_size
    assert size_ours < (tmp_path / "peft" / "adapter_model.safetensors").stat().st_size or not save_projection


def test_ours_into_peft_gpt2_conv1d(tmp_path):
    base = tiny_gpt2()
    m = get_vera_model(copy.deepcopy(base), VeraConfig(r=8, target_modules=["c_attn", "c_proj"], seed=3))
    randomise(m)
    ids = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(1))
    want = _logits64(m, ids)
    m.save_peft(tmp_path / "to_peft")
    cfg = json.loads((tmp_path / "to_peft" / "adapter_config.json").read_text())
    assert cfg["fan_in_fan_out"] is True and cfg["save_projection"] is True
    pm = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "to_peft").eval()
    assert _close64(_logits64(pm, ids), want)  # REL64
    # and back: the stored projections are ours, not PEFT's draws; the spec document carried in the file's
    # metadata names their generator and seed, and they regenerate bit for bit, so the seed is all that is kept
    back = VeraModel.from_peft(copy.deepcopy(base), tmp_path / "to_peft").eval()
    assert (back.vera_configs["default"].generator, back.vera_configs["default"].seed) == ("philox4x32-10", 3)
    assert _close64(_logits64(back, ids), want)  # REL64


def test_seed_only_checkpoint_converts_without_torch(tmp_path):
    base = tiny_bert()
    pm = _peft_model(base, r=4, target_modules=["query", "value"], projection_prng_key=2**33 + 5,
                     save_projection=False)
    pm.save_pretrained(tmp_path / "peft")
    out = tmp_path / "conv.safetensors"
    code = f"""
import sys
sys.modules['torch'] = None  # any import of torch now fails
sys.path.insert(0, {str(ROOT)!r})
from vera_ref.cli import main
sys.exit(main(['convert', '--from-peft', {str(tmp_path / 'peft')!r}, '--out', {str(out)!r}, '--in-features', '32']))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "generator peft-mt19937, seed 8589934597" in res.stdout
    ids = torch.randint(0, 100, (2, 5), generator=torch.Generator().manual_seed(2))
    ours = VeraModel.from_adapter(copy.deepcopy(base), out).eval()
    assert _close64(_logits64(ours, ids), _logits64(pm, ids))  # REL64


def test_convert_cli_to_peft_and_errors(tmp_path):
    base = tiny_bert()
    m = get_vera_model(copy.deepcopy(base), VeraConfig(r=4, target_modules=["query"], seed=0))
    m.save_adapter(tmp_path / "a.safetensors")
    res = subprocess.run([sys.executable, "-m", "vera_ref.cli", "convert", "--to-peft", str(tmp_path / "a.safetensors"),
                          "--out", str(tmp_path / "p")], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0 and (tmp_path / "p" / "adapter_model.safetensors").exists()
    with pytest.raises(ConversionError, match="no adapter_config.json"):
        peft_to_adapter(tmp_path)
    with pytest.raises(ConversionError, match=r"in_features unknown; give dims or in_features"):
        pm = _peft_model(base, r=4, target_modules=["query"], save_projection=False)
        pm.save_pretrained(tmp_path / "seedonly")
        peft_to_adapter(tmp_path / "seedonly")
