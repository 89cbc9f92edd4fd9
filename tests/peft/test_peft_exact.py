"""PEFT exchange that never silently changes the model (issue 12): exact target_modules, kept
projections, and checkpoints whose projections PEFT would regenerate differently."""
import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file  # noqa: E402

from torch_models import randomise, tiny_bert  # noqa: E402
from vera_ref.errors import ConversionError  # noqa: E402
from vera_ref.peft_interop import peft_to_adapter  # noqa: E402
from vera_torch import VeraConfig, VeraModel, get_vera_model  # noqa: E402
from vera_torch.peft import model_modules  # noqa: E402

TARGETS = ["query", "value", "intermediate.dense"]  # 32->32, 32->32, 32->48: mixed widths
VERA_REF = Path(sys.executable).parent / "vera-ref"  # the console script of the environment running the tests
IDS = torch.randint(0, 100, (3, 9), generator=torch.Generator().manual_seed(0))


# PEFT and ours compute one function of a tiny float64 BERT (2 layers, width <= 48) in other orders:
# ~(terms + ops on a value's way, < 400) * 2^-53 * S per layer, times the gains of LayerNorm, softmax
# and gelu (each < 10 here): under 1e-11 of the logits' scale on any BLAS or thread count; another
# projection, a missing module or a wrong head moves the logits by > 1e-3 of it.
REL64 = 1e-9


def _logits64(model):
    """The logits on IDS of a float64 copy of ``model`` (its float32 values widened exactly)."""
    return copy.deepcopy(model).double().eval()(input_ids=IDS).logits


def _close64(got, want):
    assert got.dtype == want.dtype == torch.float64
    return (got - want).abs().max().item() <= REL64 * max(1.0, want.abs().max().item())


def _adapted(base):
    return [n for n, _ in base.named_modules() if n.endswith(tuple("." + t for t in TARGETS))]


def _peft_checkpoint(base, path, **kw):
    pm = peft.get_peft_model(copy.deepcopy(base), peft.VeraConfig(r=8, target_modules=TARGETS, **kw))
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "vera_lambda" in n:
                p.copy_(torch.randn(p.shape, generator=g))
    pm.save_pretrained(path)
    return _logits64(pm)


def _peft_load(base, path):
    pm = peft.PeftModel.from_pretrained(copy.deepcopy(base), path).eval()
    targeted = sorted(pm.base_model.targeted_module_names)
    return _logits64(pm), targeted, pm.base_model.vera_A["default"].shape


def _edit_config(path, **changes):
    cfg = json.loads((path / "adapter_config.json").read_text())
    cfg.update(changes)
    (path / "adapter_config.json").write_text(json.dumps(cfg))


def test_bert_ours_save_peft_and_cli_agree(tmp_path):
    base = tiny_bert()
    m = get_vera_model(copy.deepcopy(base), VeraConfig(r=8, target_modules=TARGETS, seed=5,
                                                       modules_to_save=["classifier"]))
    randomise(m)
    with torch.no_grad():
        m.base_model.classifier.copies["default"].weight.mul_(-2.0)  # a trained head, not the original
    ours = _logits64(m)
    m.save_peft(tmp_path / "saved")
    m.save_adapter(tmp_path / "a.safetensors")
    res = subprocess.run([str(VERA_REF), "convert", "--to-peft", str(tmp_path / "a.safetensors"),
                          "--out", str(tmp_path / "cli")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    for d in ("saved", "cli"):
        cfg = json.loads((tmp_path / d / "adapter_config.json").read_text())
        assert isinstance(cfg["target_modules"], str) and cfg["modules_to_save"] == ["classifier"]
        got, targeted, a_shape = _peft_load(base, tmp_path / d)
        assert targeted == sorted(_adapted(base)) and len(targeted) == 6  # exactly ours, not every "dense"
        assert tuple(a_shape) == (8, 32)
        assert _close64(got, ours), d  # REL64


@pytest.mark.parametrize("save_projection", [False, True])
def test_bert_mixed_widths_peft_into_ours_and_back(tmp_path, save_projection):
    base = tiny_bert()
    want = _peft_checkpoint(base, tmp_path / "p", save_projection=save_projection, projection_prng_key=7)
    vm = VeraModel.from_peft(copy.deepcopy(base), tmp_path / "p").eval()
    assert vm.vera_configs["default"].generator == "peft-mt19937"
    assert _close64(_logits64(vm), want)  # REL64
    assert {m.name: (m.in_features, m.out_features) for m in vm.to_adapter(fingerprint=False).config.modules} == {
        n: ((32, 48) if n.endswith("intermediate.dense") else (32, 32)) for n in _adapted(base)}
    vm.save_peft(tmp_path / "back")
    got, targeted, _ = _peft_load(base, tmp_path / "back")
    assert targeted == sorted(_adapted(base)) and _close64(got, want)


def test_keep_projections_both_ways(tmp_path):
    base = tiny_bert()
    want = _peft_checkpoint(base, tmp_path / "p", save_projection=True, projection_prng_key=3)
    # default: PEFT's own draws become seed-only, and PEFT regenerates them on the way back
    plain = VeraModel.from_peft(copy.deepcopy(base), tmp_path / "p")
    plain.save_peft(tmp_path / "seedonly")
    assert json.loads((tmp_path / "seedonly" / "adapter_config.json").read_text())["save_projection"] is False
    # keep_projections on import: the pair stays stored, and export writes it with the original key
    kept = VeraModel.from_peft(copy.deepcopy(base), tmp_path / "p", keep_projections=True).eval()
    assert kept.vera_configs["default"].generator == "stored"
    assert _close64(_logits64(kept), want)
    kept.save_peft(tmp_path / "kept")
    cfg = json.loads((tmp_path / "kept" / "adapter_config.json").read_text())
    assert cfg["save_projection"] is True and cfg["projection_prng_key"] == 3
    a = load_file(tmp_path / "kept" / "adapter_model.safetensors")
    b = load_file(tmp_path / "p" / "adapter_model.safetensors")
    assert torch.equal(a["base_model.vera_A"], b["base_model.vera_A"])
    assert torch.equal(a["base_model.vera_B"], b["base_model.vera_B"])
    # keep_projections on export of a seed-only adapter: PEFT's draws written out
    plain.save_peft(tmp_path / "kept2", keep_projections=True)
    assert json.loads((tmp_path / "kept2" / "adapter_config.json").read_text())["save_projection"] is True
    assert torch.equal(load_file(tmp_path / "kept2" / "adapter_model.safetensors")["base_model.vera_A"],
                       b["base_model.vera_A"])
    for d in ("seedonly", "kept", "kept2"):
        got, _, _ = _peft_load(base, tmp_path / d)
        assert _close64(got, want), d


def test_targets_that_select_more_modules_convert_with_peft_projections(tmp_path):
    """A seed-only checkpoint whose target_modules ('dense') select 11 modules but that holds vectors for 6:
    PEFT draws its projections at n_in=48; ours must compute the same, with those projections stored."""
    base = tiny_bert()
    _peft_checkpoint(base, tmp_path / "p", save_projection=False, projection_prng_key=9)
    _edit_config(tmp_path / "p", target_modules=["dense", "query", "value"])
    want, targeted, a_shape = _peft_load(base, tmp_path / "p")
    assert len(targeted) == 11 and tuple(a_shape) == (8, 48)
    vm = VeraModel.from_peft(copy.deepcopy(base), tmp_path / "p").eval()
    assert vm.vera_configs["default"].generator == "stored"
    ad = peft_to_adapter(tmp_path / "p", model_modules=model_modules(VeraModel(copy.deepcopy(base))))
    assert ad.config.provenance["projections"] == "PEFT's draws for projection_prng_key=9 at n_in=48, n_out=48"
    assert _close64(_logits64(vm), want)  # REL64
    # the same checkpoint with stored (8, 32) projections cannot be what PEFT loads into (8, 48) buffers
    _peft_checkpoint(base, tmp_path / "s", save_projection=True)
    _edit_config(tmp_path / "s", target_modules=["dense", "query", "value"])
    with pytest.raises(ConversionError, match=r"vera_A \[8, 32\] / vera_B \[48, 8\] do not match r=8, n_in=48, "
                                              r"n_out=48 that PEFT gives the selected modules"):
        VeraModel.from_peft(copy.deepcopy(base), tmp_path / "s")


def test_low_precision_stored_projections_stay_stored(tmp_path):
    base = tiny_bert()
    _peft_checkpoint(base, tmp_path / "p", save_projection=True, projection_prng_key=0)
    t = load_file(tmp_path / "p" / "adapter_model.safetensors")
    t["base_model.vera_A"] = t["base_model.vera_A"].bfloat16()
    t["base_model.vera_B"] = t["base_model.vera_B"].bfloat16()
    save_file(t, tmp_path / "p" / "adapter_model.safetensors", metadata={"format": "pt"})
    want, _, _ = _peft_load(base, tmp_path / "p")
    vm = VeraModel.from_peft(copy.deepcopy(base), tmp_path / "p").eval()
    assert vm.vera_configs["default"].generator == "stored"  # not PEFT's float32 draws: those differ
    assert _close64(_logits64(vm), want)  # REL64


def test_refusals(tmp_path):
    base = tiny_bert()
    _peft_checkpoint(base, tmp_path / "p", save_projection=True, projection_prng_key=2)
    _edit_config(tmp_path / "p", target_modules=["query", "intermediate.dense"])
    with pytest.raises(ConversionError, match=r"bert.encoder.layer.0.attention.self.value: target_modules "
                                              r"\[.*\] do not select this module, so PEFT would not load its vectors"):
        peft_to_adapter(tmp_path / "p", in_features=32)
    _edit_config(tmp_path / "p", target_modules=TARGETS, save_projection=False, projection_prng_key=5)
    with pytest.raises(ConversionError, match="save_projection is false, so PEFT ignores the stored vera_A / "
                                              "vera_B and regenerates them from projection_prng_key=5, and they differ"):
        VeraModel.from_peft(copy.deepcopy(base), tmp_path / "p")
    _peft_checkpoint(base, tmp_path / "q", save_projection=False)
    _edit_config(tmp_path / "q", save_projection=True)
    with pytest.raises(ConversionError, match="save_projection is true but base_model.vera_A / vera_B are missing"):
        VeraModel.from_peft(copy.deepcopy(base), tmp_path / "q")
    _edit_config(tmp_path / "q", save_projection=False, target_modules=r".*\.(query|value|intermediate\.dense|"
                                                                       r"LayerNorm)")
    with pytest.raises(ConversionError, match="select 'bert.embeddings.LayerNorm', which is not an nn.Linear or "
                                              "Conv1D: PEFT would refuse"):
        VeraModel.from_peft(copy.deepcopy(base), tmp_path / "q")


def test_export_refuses_a_module_peft_would_not_adapt(tmp_path):
    from vera_ref import ModuleSpec, new_adapter
    from vera_ref.peft_interop import adapter_to_peft
    ad = new_adapter([ModuleSpec("head.dense", 4, 4), ModuleSpec("enc.query", 4, 4)], r=2, seed=0)
    ad.extra["head.weight"] = (np.ones((4, 4), np.float32), "float32")  # head saved whole: PEFT skips inside it
    with pytest.raises(ConversionError, match=r"target_modules '\(\?:enc\\\\.query\|head\\\\.dense\)': PEFT would "
                                              r"not adapt 'head.dense'"):
        adapter_to_peft(ad, tmp_path / "x")
    assert not (tmp_path / "x").exists()  # refused before anything was written
