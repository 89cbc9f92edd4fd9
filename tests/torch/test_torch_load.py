"""Loading adapters into a VeraModel: every problem is AdapterFileError or ModelMismatchError naming the
cause, and a failed load changes nothing on the model (issue: hostile files)."""
import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import vera_ref  # noqa: E402
from torch_models import TinyNet, randomise  # noqa: E402
from vera_ref.errors import AdapterFileError, ModelMismatchError, VeraError  # noqa: E402
from vera_torch import AdapterNameError, VeraConfig, VeraModel, get_vera_model  # noqa: E402
from vera_torch.heads import ModulesToSave  # noqa: E402


def _trained(**cfg):
    torch.manual_seed(0)
    base = TinyNet()
    kw = dict(r=4, target_modules=["query", "c_fc"], seed=3, modules_to_save=["classifier"])
    kw.update(cfg)
    m = get_vera_model(copy.deepcopy(base), VeraConfig(**kw))
    randomise(m)
    return base, m


def _snapshot(model: nn.Module):
    """Everything a load could change: tensors (bits), module types, trainable flags, adapters."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    types = [(p, type(mod).__name__) for p, mod in model.named_modules()]
    flags = [(n, p.requires_grad) for n, p in model.named_parameters()]
    adapters = list(getattr(model, "vera_configs", {}))
    return sd, types, flags, adapters


def _same(a, b):
    sd_a, *rest_a = a
    sd_b, *rest_b = b
    return rest_a == rest_b and sd_a.keys() == sd_b.keys() and all(
        torch.equal(sd_a[k].view(torch.uint8) if sd_a[k].dtype != torch.bool else sd_a[k],
                    sd_b[k].view(torch.uint8) if sd_b[k].dtype != torch.bool else sd_b[k]) for k in sd_a)


def _extra(ad, **items):
    ad.extra = {k: (np.asarray(v, dtype=np.float32), "float32") for k, v in items.items()}
    return ad


def _cases(base, m):
    """(name, adapter, expected type, message regex) for adapters a model must refuse."""
    good = m.to_adapter()
    w = base.classifier.weight.detach().numpy()
    b = base.classifier.bias.detach().numpy()
    cases = []
    ad = _extra(copy.deepcopy(good), **{"blocks.0.query.weight": np.zeros((16, 16))})
    cases.append(("extra on an adapted layer", ad, ModelMismatchError,
                  r"^blocks\.0\.query\.weight: 'blocks\.0\.query' is a layer VeRA adapts; extra tensors cannot "
                  r"replace an adapted layer's weights$"))
    ad = _extra(copy.deepcopy(good), **{"blocks.0.query.base_layer.weight": np.zeros((16, 16))})
    cases.append(("extra inside an adapted layer", ad, ModelMismatchError,
                  r"^blocks\.0\.query\.base_layer\.weight: names the inside of a wrapper"))
    cases.append(("extra on a module holding adapted layers", _extra(copy.deepcopy(good), **{
        "blocks.0.out.weight": np.zeros((16, 24)), "blocks.0.out.bias": np.zeros(16),
        "blocks.weight": np.zeros(3)}), ModelMismatchError, r"^blocks\.weight: 'blocks\.0\.c_fc' is a layer VeRA adapts"))
    cases.append(("part of a module", _extra(copy.deepcopy(good), **{"classifier.weight": w}), ModelMismatchError,
                  r"^classifier\.bias: missing; the adapter saves part of module 'classifier' but a saved module "
                  r"\(modules_to_save\) must be saved whole$"))
    cases.append(("extra for the root", _extra(copy.deepcopy(good), **{"scale": np.ones(1)}), ModelMismatchError,
                  r"^scale: an extra tensor must belong to a submodule, not the model root$"))
    cases.append(("extra of another shape", _extra(copy.deepcopy(good), **{"classifier.weight": np.zeros((4, 16)),
                                                                          "classifier.bias": b}),
                  ModelMismatchError, r"^classifier\.weight: shape \[4, 16\] in the adapter but \[3, 16\] in the model$"))
    cases.append(("extra naming no tensor of its module", _extra(copy.deepcopy(good), **{
        "classifier.weight": w, "classifier.bias": b, "classifier.scale": np.ones(3)}), ModelMismatchError,
                  r"^classifier\.scale: module 'classifier' has no tensor 'scale'$"))
    cases.append(("extra for a missing module", _extra(copy.deepcopy(good), **{"head.weight": np.zeros(2)}),
                  ModelMismatchError, r"^head\.weight: the model has no module 'head' for this extra tensor$"))
    ad = copy.deepcopy(good)
    ad.config.vector_dtype = "float16"
    ad.config.d_initial = 1e6
    cases.append(("d_initial overflowing float16", ad, AdapterFileError,
                  r"^d_initial: 1000000\.0 overflows vector_dtype float16$"))
    ad = copy.deepcopy(good)
    ad.lambda_b["blocks.1.c_fc"] = ad.lambda_b["blocks.1.c_fc"] * np.nan
    cases.append(("NaN vector", ad, AdapterFileError,
                  r"^blocks\.1\.c_fc\.lambda_b: contains non-finite values \(NaN or infinity\)$"))
    ad = copy.deepcopy(good)
    ad.lambda_d["blocks.1.c_fc"] = np.zeros(5, np.float32)
    cases.append(("vector of another shape", ad, AdapterFileError, r"^blocks\.1\.c_fc\.lambda_d: shape \[5\] must be \[4\]$"))
    ad = copy.deepcopy(good)
    del ad.lambda_d["blocks.0.query"]
    cases.append(("missing vector", ad, AdapterFileError, r"^blocks\.0\.query\.lambda_d: missing$"))
    ad = copy.deepcopy(good)
    ad.config.modules[0] = type(ad.config.modules[0])("blocks.0.query", 16, 17, "linear")
    cases.append(("module of another size", ad, ModelMismatchError,
                  r"^modules: 'blocks\.0\.query' is \(in=16, out=16, linear\) in this model but \(in=16, out=17, linear\)"))
    ad = copy.deepcopy(good)
    ad.config.modules[0] = type(ad.config.modules[0])("blocks.0", 16, 16, "linear")
    cases.append(("module that is not a layer", ad, ModelMismatchError,
                  r"^modules: 'blocks\.0' is a Block, not an nn\.Linear or Conv1D$"))
    return cases


def test_every_refused_adapter_leaves_the_model_unchanged():
    base, m = _trained()
    for fresh in (True, False):
        for what, ad, err, msg in _cases(base, m):
            target = copy.deepcopy(base) if fresh else copy.deepcopy(m)
            before = _snapshot(target)
            with pytest.raises(err, match=msg):
                if fresh:
                    VeraModel.from_adapter(target, ad, "x")
                else:
                    target.load_adapter(ad, "x")
            assert _same(_snapshot(target), before), what
            if not fresh:  # and a retry of a good adapter under the same name works
                target.load_adapter(m.to_adapter(), "x")
                assert target.adapters == ["default", "x"]


def test_only_documented_errors_and_the_same_name_twice():
    base, m = _trained()
    for _, ad, err, _ in _cases(base, m):
        assert issubclass(err, VeraError)
    before = _snapshot(m)
    with pytest.raises(AdapterFileError, match=r"^path: expected a file path or a vera_ref\.Adapter, got int$"):
        m.load_adapter(3, "x")
    with pytest.raises(AdapterNameError, match=r"^adapter 'default' already exists$"):
        m.load_adapter(m.to_adapter(), "default")
    assert _same(_snapshot(m), before)


def test_a_float16_model_is_told_why_its_fingerprint_differs(tmp_path):
    base, m = _trained()
    m.save_adapter(tmp_path / "a.safetensors")
    half = copy.deepcopy(base).half()
    before = _snapshot(half)
    with pytest.raises(ModelMismatchError, match=r"^base_model\.fingerprint: this model's weights give [0-9a-f]{16}\.\.\., "
                                                 r"the adapter was trained on [0-9a-f]{16}\.\.\. \(this model's adapted "
                                                 r"weights are float16; the fingerprint is of the float32 weights as "
                                                 r"trained, so a cast model never matches: load before casting, or pass "
                                                 r"check_fingerprint=False\)$"):
        VeraModel.from_adapter(half, tmp_path / "a.safetensors")
    assert _same(_snapshot(half), before)
    vm = VeraModel.from_adapter(half, tmp_path / "a.safetensors", check_fingerprint=False)
    assert vm.adapters == ["default"]
    # loaded before casting, the fingerprint matches; after a cast the model's fingerprint is the W0 it now has
    vm32 = VeraModel.from_adapter(copy.deepcopy(base), tmp_path / "a.safetensors")
    assert vm32.base_fingerprint() == vera_ref.load_adapter(tmp_path / "a.safetensors").config.base_model["fingerprint"]


def test_values_that_do_not_fit_the_models_dtypes_are_refused():
    base, m = _trained()
    ad = m.to_adapter()
    ad.extra["classifier.weight"] = (np.full((3, 16), 1e6, np.float32), "float32")
    half = copy.deepcopy(base).half()
    before = _snapshot(half)
    with pytest.raises(ModelMismatchError, match=r"^classifier\.weight: values are not finite in float16, this model's "
                                                 r"dtype for it$"):
        VeraModel.from_adapter(half, ad, check_fingerprint=False)
    assert _same(_snapshot(half), before)
    ad = m.to_adapter()
    ad.lambda_b["blocks.0.query"] = np.full(16, 1e6, np.float32)
    with pytest.raises(AdapterFileError, match=r"^blocks\.0\.query\.lambda_b: values overflow float16$"):
        VeraModel.from_adapter(copy.deepcopy(base), ad, vector_dtype="float16")


def test_a_saved_head_loads_whole_also_next_to_another_adapters_copy(tmp_path):
    base, m = _trained()
    with torch.no_grad():
        m.base_model.classifier.copies["default"].weight.mul_(-2)
    m.save_adapter(tmp_path / "a.safetensors")
    ad = vera_ref.load_adapter(tmp_path / "a.safetensors")
    assert sorted(ad.extra) == ["classifier.bias", "classifier.weight"]
    m.load_adapter(tmp_path / "a.safetensors", "again")
    head = m.base_model.classifier
    assert isinstance(head, ModulesToSave) and sorted(head.copies) == ["again", "default"]
    assert torch.equal(head.copies["again"].weight, head.copies["default"].weight)
    x = torch.randn(2, 3, 16)
    m.set_adapter("default")
    y = m(x)
    m.set_adapter("again")
    assert torch.equal(m(x), y)


def test_stored_projection_of_the_wrong_shape_is_refused():
    base, m = _trained(generator="stored", modules_to_save=None)
    ad = m.to_adapter()
    A, B = ad.stored[0]
    ad.stored[0] = (A[:, :5], B)
    target = copy.deepcopy(base)
    before = _snapshot(target)
    with pytest.raises(AdapterFileError, match=r"^A: shape \[4, 5\] must be \[4, 16\]$"):
        VeraModel.from_adapter(target, ad)
    assert _same(_snapshot(target), before)


def test_base_model_fields_given_are_written_as_given(tmp_path):
    """to_adapter/save_adapter(base_model=...): the name, revision and fingerprint of a loaded file are
    written back unchanged (spec 4.3), the fingerprint given wins over the one computed from the weights,
    and without one the model's own fingerprint is written."""
    _, m = _trained()
    own = m.base_fingerprint("default")
    given = {"name": "org/model", "revision": "0123abc", "fingerprint": "f" * 64}
    m.save_adapter(tmp_path / "a.safetensors", base_model=given)
    assert vera_ref.load_adapter(tmp_path / "a.safetensors").config.base_model == given
    m.save_adapter(tmp_path / "b.safetensors", base_model={"name": "org/model", "revision": "0123abc"})
    assert vera_ref.load_adapter(tmp_path / "b.safetensors").config.base_model == {
        "name": "org/model", "revision": "0123abc", "fingerprint": own}
    assert own != "f" * 64
