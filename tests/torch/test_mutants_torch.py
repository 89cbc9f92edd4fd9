"""Sharper tests for vera_torch, written to kill surviving mutants of backends/vera_torch
(tools/mutate.py, issue 15): name and config checks, attribute pass-through, trainable sets,
defaults (README "PyTorch", PEFT's VeraConfig defaults), stored projections missing from an
adapter."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import vera_ref  # noqa: E402
from vera_ref.errors import AdapterFileError  # noqa: E402
from vera_torch import VeraConfig, VeraModel  # noqa: E402
from vera_torch.errors import AdapterNameError, ConfigError  # noqa: E402


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(8, 6)
        self.v = nn.Linear(6, 5)
        self.flavour = "plain"  # a plain attribute the wrapper passes through

    def forward(self, x):
        return self.v(torch.tanh(self.q(x)))


def net() -> Net:
    torch.manual_seed(0)
    return Net()


def test_vera_config_defaults():
    """PEFT's VeraConfig defaults, as README "PyTorch" documents them."""
    c = VeraConfig()
    assert (c.r, c.target_modules, c.seed, c.d_initial, c.dropout) == (256, ["query", "value"], 0, 0.1, 0.0)
    assert (c.sharing, c.generator, c.vector_dtype, c.modules_to_save) == ("shared", "philox4x32-10", torch.float32,
                                                                          None)


@pytest.mark.parametrize("bad", ["", "a.b", 3, None])
def test_adapter_names_are_checked(bad):
    m = VeraModel(net())
    with pytest.raises(AdapterNameError, match=r"^an adapter name must be a non-empty string without '\.', got "):
        m.add_adapter(bad, VeraConfig(r=2, target_modules=["q"]))
    assert m.adapters == [] and not list(m.vera_layers())


def test_a_taken_name_and_a_non_config_are_refused_before_any_change():
    m = VeraModel(net(), VeraConfig(r=2, target_modules=["q"]))
    with pytest.raises(AdapterNameError, match=r"^adapter 'default' already exists$"):
        m.add_adapter("default", VeraConfig(r=3, target_modules=["v"]))
    with pytest.raises(ConfigError, match=r"^config: must be a VeraConfig, got dict$"):
        m.add_adapter("other", {"r": 2})
    assert m.adapters == ["default"]
    assert isinstance(m.base_model.v, nn.Linear)  # v was not wrapped by the refused add
    assert m.base_model.q.vera_lambda_d["default"].shape == (2,)


def test_attributes_pass_through_to_the_wrapped_model():
    m = VeraModel(net(), VeraConfig(r=2, target_modules=["q"]))
    assert m.flavour == "plain"
    with pytest.raises(AttributeError):
        m.no_such_attribute


def test_set_trainable_checks_names_and_sets_exactly_those():
    m = VeraModel(net(), VeraConfig(r=2, target_modules=["q", "v"]))
    m.add_adapter("b", VeraConfig(r=3, target_modules=["q", "v"], seed=1))
    with pytest.raises(AdapterNameError, match=r"^no adapter named 'nope' \(have: default, b\)$"):
        m.set_trainable(["b", "nope"])
    m.set_trainable(["b"])
    for layer in m.vera_layers():
        assert not layer.vera_lambda_d["default"].requires_grad and not layer.vera_lambda_b["default"].requires_grad
        assert layer.vera_lambda_d["b"].requires_grad and layer.vera_lambda_b["b"].requires_grad
    assert m.active_adapter == "default"
    assert all(not p.requires_grad for n, p in m.named_parameters() if "vera_lambda" not in n)


@pytest.mark.parametrize("sharing", ["shared", "per-module"])
def test_an_adapter_without_its_stored_projection_is_refused(sharing):
    m = VeraModel(net(), VeraConfig(r=2, target_modules=["q", "v"], generator="stored", seed=4, sharing=sharing))
    ad = m.to_adapter()
    want = vera_ref.projection(4, 2, 8, 6) if sharing == "shared" else vera_ref.projection(4, 2, 6, 5, 2)
    g = 0 if sharing == "shared" else 2
    np.testing.assert_array_equal(ad.stored[g][0], want[0])
    np.testing.assert_array_equal(ad.stored[g][1], want[1])
    del ad.stored[g]
    with pytest.raises(AdapterFileError, match=rf"^{'A' if g == 0 else 'A.2'}: missing$"):
        VeraModel.from_adapter(net(), ad)


@pytest.mark.parametrize("which", ["A", "B"])
def test_given_stored_projections_must_fit_the_model(which):
    from vera_ref.errors import ModelMismatchError
    A, B = (torch.from_numpy(t) for t in vera_ref.projection(1, 2, 8, 6))
    bad = {"A": (A[:, :7], B), "B": (A, B[:5])}[which]
    m = VeraModel(net())
    with pytest.raises(ModelMismatchError, match=r"^stored projection of group 0: A \[2, (7|8)\], B \[(5|6), 2\], "
                                                 r"this model needs A \[2, 8\], B \[6, 2\]$"):
        m.add_adapter("s", VeraConfig(r=2, target_modules=["q", "v"], generator="stored"), stored={0: bad})
    assert m.adapters == [] and not list(m.vera_layers())
    m.add_adapter("s", VeraConfig(r=2, target_modules=["q", "v"], generator="stored"), stored={0: (A * 2, B)})
    got, _ = m.base_model.q.projection("s")
    assert torch.equal(got, A * 2)  # the given pair is kept, not redrawn from the seed
