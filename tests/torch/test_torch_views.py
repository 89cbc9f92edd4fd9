"""VeraModel's export seam: adapter_view, replace_module, unwrapped."""
import copy

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import vera_ref  # noqa: E402
from torch_models import TinyNet, randomise  # noqa: E402
from vera_torch import AdapterView, VeraConfig, VeraLayer, get_vera_model  # noqa: E402
from vera_torch.heads import ModulesToSave  # noqa: E402


def _model(sharing="shared"):
    torch.manual_seed(0)
    m = get_vera_model(TinyNet(), VeraConfig(r=4, target_modules=["query", "c_fc"], seed=3, sharing=sharing,
                                            modules_to_save=["classifier"]))
    m.add_adapter("b", VeraConfig(r=2, target_modules=["value"], seed=7))
    randomise(m)
    return m


@pytest.mark.parametrize("sharing", ["shared", "per-module"])
def test_adapter_view_names_every_layer_with_its_vectors_and_projection(sharing):
    m = _model(sharing)
    v = m.adapter_view()
    assert isinstance(v, AdapterView) and v.name == "default" and v.config is m.vera_configs["default"]
    assert [lv.path for lv in v.layers] == [f"blocks.{i}.{n}" for i in range(2) for n in ("query", "c_fc")]
    for i, lv in enumerate(v.layers):
        layer = m.base_model.get_submodule(lv.path)
        assert lv.base_layer is layer.base_layer
        assert (lv.in_features, lv.out_features, lv.layout) == (layer.in_features, layer.out_features, layer.layout)
        assert lv.layout == ("conv1d" if lv.path.endswith("c_fc") else "linear")
        assert lv.group == (0 if sharing == "shared" else i + 1)
        assert torch.equal(lv.lambda_d, layer.vera_lambda_d["default"]) and not lv.lambda_d.requires_grad
        assert torch.equal(lv.lambda_b, layer.vera_lambda_b["default"]) and lv.lambda_b.shape == (lv.out_features,)
    if sharing == "shared":  # spec 2.2: the largest dimensions
        A, B = vera_ref.projection(3, 4, 16, 24, 0)
        assert set(v.projections) == {0}
        assert torch.equal(v.projections[0][0], torch.from_numpy(A))
        assert torch.equal(v.projections[0][1], torch.from_numpy(B))
    else:
        assert set(v.projections) == {1, 2, 3, 4}
        A, B = vera_ref.projection(3, 4, 16, 24, 2)  # module 1: c_fc (in 16, out 24)
        assert torch.equal(v.projections[2][0], torch.from_numpy(A))
        assert torch.equal(v.projections[2][1], torch.from_numpy(B))
    assert all(a.dtype == torch.float32 and a.device.type == "cpu" for p in v.projections.values() for a in p)
    (h,) = v.heads
    w = m.base_model.classifier
    assert h.path == "classifier" and h.module is w.copies["default"] and h.original is w.original_module
    vb = m.adapter_view("b")
    assert [lv.path for lv in vb.layers] == ["blocks.0.value", "blocks.1.value"] and vb.heads == []
    with pytest.raises(KeyError, match="no adapter named 'zz'"):
        m.adapter_view("zz")


def test_unwrapped_and_replace_module():
    m = _model()
    x = torch.randn(2, 3, 16)
    base_layers = {p: l.base_layer for p, l in m.base_model.named_modules() if isinstance(l, VeraLayer)}
    head = m.base_model.classifier.copies["default"]
    with m.disable_adapter():
        want = m(x)
    plain = copy.deepcopy(m).unwrapped()
    assert not any(isinstance(x_, (VeraLayer, ModulesToSave)) for x_ in plain.modules())
    assert torch.equal(plain(x), want)
    kept = m.unwrapped("default")
    assert kept is m.base_model and kept.classifier is head
    assert all(kept.get_submodule(p) is b for p, b in base_layers.items())
    new = nn.Linear(16, 3)
    m.replace_module("classifier", new)
    assert m.base_model.classifier is new
