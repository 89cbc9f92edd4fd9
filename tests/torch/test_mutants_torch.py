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
from torch_models import Headed  # noqa: E402
from vera_ref.tolerance import backward_magnitude, compare, constant, forward_magnitude  # noqa: E402

F64 = dict(vector_dtype=torch.float64)
# Two paths that compute one function of these small float64 nets (a mixed batch and a row alone, another
# batch size or order of the same sums) differ by at most ~(terms + ops on a value's way, < 50) * 2^-53 * S,
# amplified by tanh (gain <= 1) and the next layer (S / |y| and its gain < 10): under 1e-12 of the output
# scale on any BLAS or thread count, while a wrong row, slot or adapter moves the output by > 1e-2 of it.
REL64 = 1e-9


def _close64(got, want):
    """|got - want| <= REL64 * max(1, max |want|), both float64 (the bound above)."""
    assert got.dtype == want.dtype == torch.float64, (got.dtype, want.dtype)
    torch.testing.assert_close(got, want, rtol=0, atol=REL64 * max(1.0, float(want.detach().abs().max())))


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


def test_exact_module_lists_name_missing_modules():
    from vera_ref.errors import ModelMismatchError
    m = VeraModel(net())
    with pytest.raises(ModelMismatchError, match=r"^modules: 'nope' is not an nn\.Linear or Conv1D of this model$"):
        m.add_adapter("a", VeraConfig(r=2), modules=["q", "nope"])
    m.add_adapter("a", VeraConfig(r=2), modules=["v", "q"])
    assert m.vera_modules["a"] == ["v", "q"]  # the given order (the file's order)


def test_regex_targets_skip_non_layers_wrapped_layers_and_head_copies():
    torch.manual_seed(0)
    m = VeraModel(Headed(), VeraConfig(r=2, target_modules=["q"], modules_to_save=["head"]))
    # matches q, q.base_layer, act, head's original_module and copies: only q may be adapted
    m.add_adapter("b", VeraConfig(r=3, target_modules=r"q.*|act|head\..*", seed=2))
    assert m.vera_modules["b"] == ["q"]
    assert type(m.base_model.q.base_layer) is nn.Linear and isinstance(m.base_model.act, nn.Tanh)
    names = {p for p, mod in m.base_model.named_modules() if type(mod).__name__ == "VeraLayer"}
    assert names == {"q"}


def test_a_saved_module_cannot_hold_or_be_an_adapted_layer():
    from vera_ref.errors import ModelMismatchError
    torch.manual_seed(0)
    m = VeraModel(Headed())
    with pytest.raises(ModelMismatchError, match=r"^modules_to_save: 'q' is the adapted layer 'q'"):
        m.add_adapter("a", VeraConfig(r=2, target_modules=["q"], modules_to_save=["q"]))
    m2 = VeraModel(nn.Sequential(Headed()))
    with pytest.raises(ModelMismatchError, match=r"^modules_to_save: '0' overlaps the adapted layer '0\.q'"):
        m2.add_adapter("a", VeraConfig(r=2, target_modules=["q"], modules_to_save=r"0"))
    assert m.adapters == [] and m2.adapters == []


def test_deleting_an_adapter_forgets_it_everywhere():
    m = VeraModel(net(), VeraConfig(r=2, target_modules=["q", "v"], generator="stored", seed=3, dropout=0.1))
    m.add_adapter("b", VeraConfig(r=3, target_modules=["q", "v"], seed=1))
    assert any(k.startswith("vera_projections.default__") for k in m.state_dict())
    m.delete_adapter("default")
    assert not any("default" in k for k in m.state_dict()), [k for k in m.state_dict() if "default" in k]
    for layer in m.vera_layers():
        assert "default" not in layer.proj and "default" not in layer.dropout and "default" not in layer.klass


def test_slots_survive_deleting_one_adapter_of_a_class():
    """a, b, c share one projection class; deleting a must keep b's slot, c takes a free one."""
    torch.manual_seed(0)
    m = VeraModel(net().double())
    x = torch.randn(3, 8, dtype=torch.float64)
    want = {}
    for i, n in enumerate(["a", "b", "c"]):
        if n == "c":
            m.delete_adapter("a")
        m.add_adapter(n, VeraConfig(r=2, target_modules=["q", "v"], seed=5, **F64))
        with torch.no_grad():
            for layer in m.vera_layers():
                layer.vera_lambda_b[n].copy_(torch.linspace(-1, 1, layer.out_features) * (i + 1))
        m.set_adapter(n)
        with torch.no_grad():
            want[n] = m(x)
    with torch.no_grad():
        got = m(x, adapter_ids=["c", "b", None])
        base = m.base_model.v.base_layer(torch.tanh(m.base_model.q.base_layer(x)))
    _close64(got[0], want["c"][0])  # REL64: float64, one function; a lost or shared slot is O(1) off
    _close64(got[1], want["b"][1])
    _close64(got[2], base[2])


def test_merge_accepts_a_finite_weight_whose_sum_overflows():
    """float16 weights of 60000: every value finite, their sum is not (the finite check must look
    at the values, not only at the sum)."""
    lin = nn.Linear(64, 4).to(torch.float16)
    with torch.no_grad():
        lin.weight.fill_(60000.0)
    m = VeraModel(nn.Sequential(lin), VeraConfig(r=2, target_modules=["0"]))
    with torch.no_grad():
        m.base_model[0].vera_lambda_b["default"].fill_(1e-3)
    m.merge()
    assert bool(torch.isfinite(m.base_model[0].weight).all())
    assert m.base_model[0].merged == ["default"]
    m.unmerge()
    assert bool((m.base_model[0].weight == 60000.0).all())


@pytest.mark.parametrize("fused", ["x", "h"])
def test_fused_path_gradient_of_lambda_b_alone(fused):
    """Training lambda_b with lambda_d frozen on either fused path: lambda_b still gets its spec 3.4 gradient."""
    torch.manual_seed(0)
    m = VeraModel(nn.Sequential(nn.Linear(8, 6)), VeraConfig(r=3, target_modules=["0"], seed=2))
    layer = m.base_model[0]
    layer.fused = fused
    with torch.no_grad():
        layer.vera_lambda_b["default"].copy_(torch.linspace(-1, 1, 6))
    layer.vera_lambda_d["default"].requires_grad_(False)
    x = torch.randn(5, 8, dtype=torch.float32)
    dy = torch.randn(5, 6)
    (m(x) * dy).sum().backward()
    A, B = vera_ref.projection(2, 3, 8, 6)
    g = vera_ref.backward(x.double().numpy(), layer.base_layer.weight.detach().double().numpy(), A, B,
                          layer.vera_lambda_d["default"].detach().double().numpy(),
                          layer.vera_lambda_b["default"].detach().double().numpy(), dy.double().numpy())
    got = layer.vera_lambda_b["default"].grad
    assert got is not None
    Sg = backward_magnitude(x.double().numpy(), layer.base_layer.weight.detach().double().numpy(), A, B,
                            layer.vera_lambda_d["default"].detach().double().numpy(),
                            layer.vera_lambda_b["default"].detach().double().numpy(), dy.double().numpy())
    c = constant("d_lambda_b", "float32", N=5, in_features=8, out_features=6, r=3)  # spec 5.2.3
    chk = compare(got.numpy(), g.lambda_b, Sg.lambda_b, "float32", c)
    assert chk.ok, chk.describe()


def test_vera_linear_default_layout_is_linear():
    from vera_torch.functional import vera_linear
    torch.manual_seed(0)
    x, W, b = torch.randn(4, 8, dtype=torch.float64), torch.randn(6, 8, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    A, B = vera_ref.projection(1, 3, 8, 6)
    ld, lb = np.linspace(-1, 1, 3), np.linspace(1, 2, 6)
    got = vera_linear(x, W, b, torch.from_numpy(ld), torch.from_numpy(lb), torch.from_numpy(A).double(),
                      torch.from_numpy(B).double())
    want = vera_ref.forward(x.numpy(), W.numpy(), b.numpy(), A, B, ld, lb)
    S = forward_magnitude(x.numpy(), W.numpy(), b.numpy(), A, B, ld, lb)
    chk = compare(got.detach().numpy(), want, S, "float64",
                  constant("forward", "float64", N=4, in_features=8, out_features=6, r=3))  # spec 5.2.3
    assert chk.ok, chk.describe()


def test_a_layer_called_outside_the_model_and_its_repr():
    m = VeraModel(net(), VeraConfig(r=2, target_modules=["q"]))
    q = m.base_model.q
    with torch.no_grad():
        q.vera_lambda_b["default"].fill_(0.5)
        x = torch.randn(3, 8)
        A, B = vera_ref.projection(0, 2, 8, 6)
        args = (x.double().numpy(), q.base_layer.weight.double().numpy(), q.base_layer.bias.double().numpy(), A, B,
                np.full(2, 0.1), np.full(6, 0.5))
        want, S = vera_ref.forward(*args), forward_magnitude(*args)
        q.fused = False
        c = constant("forward", "float32", N=3, in_features=8, out_features=6, r=2)  # spec 5.2.3
        chk = compare(q(x).numpy(), want, S, "float32", c)  # no h cache: plain path
        assert chk.ok, chk.describe()
    assert "in=8, out=6, layout=linear" in repr(q)


def test_a_failure_after_the_checks_leaves_no_half_loaded_adapter(monkeypatch):
    m = VeraModel(net(), VeraConfig(r=2, target_modules=["q", "v"]))
    ad = m.to_adapter()
    other = VeraModel(net())

    def boom(name):
        raise RuntimeError("injected")

    monkeypatch.setattr(other, "set_adapter", boom)
    with pytest.raises(RuntimeError, match="injected"):
        other.load_adapter(ad, "x")
    assert other.adapters == [] and all("x" not in layer.proj for layer in other.vera_layers())


def test_training_mixed_batch_with_an_adapter_absent_from_a_layer():
    """a (q and v, dropout 0.5) and b (q only, no dropout) share a projection class; in training mode
    b's rows get no adapter term on v and no dropout anywhere: exactly b's eval-mode output."""
    torch.manual_seed(0)
    m = VeraModel(net().double())
    m.add_adapter("a", VeraConfig(r=2, target_modules=["q", "v"], seed=5, dropout=0.5, **F64))
    m.add_adapter("b", VeraConfig(r=2, target_modules=["q"], seed=5, **F64))
    assert m.base_model.q.klass["a"] == m.base_model.q.klass["b"]
    with torch.no_grad():
        for layer in m.vera_layers():
            for n in layer.vera_lambda_b:
                layer.vera_lambda_b[n].fill_(0.7)
    x = torch.randn(4, 8, dtype=torch.float64)
    m.set_adapter("b")
    m.eval()
    with torch.no_grad():
        want = m(x)
    m.train()
    with torch.no_grad():
        got = m(x, adapter_ids=["a", "b", "a", "b"])
    assert bool(torch.isfinite(got).all())
    _close64(got[1], want[1])  # REL64: float64, one function; dropout or v's term on b's rows is O(1) off
    _close64(got[3], want[3])


class SeqHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(8, 6)
        self.head = nn.Sequential(nn.Tanh(), nn.Linear(6, 2))  # not a Linear: served row by row

    def forward(self, x):
        return self.head(self.q(x))


def _two_headed():
    torch.manual_seed(0)
    m = VeraModel(SeqHead().double())
    for i, n in enumerate(("a", "b")):
        m.add_adapter(n, VeraConfig(r=2, target_modules=["q"], seed=1, modules_to_save=["head"], **F64))
        with torch.no_grad():
            m.base_model.q.vera_lambda_b[n].fill_(0.3 * (i + 1))
            m.base_model.head.copies[n][1].weight.mul_(-(i + 2))
    return m


def test_mixed_batch_with_a_head_that_is_not_a_linear():
    m = _two_headed()
    x = torch.randn(4, 8, dtype=torch.float64)
    want = {}
    for n in ("a", "b"):
        m.set_adapter(n)
        with torch.no_grad():
            want[n] = m(x)
    with torch.no_grad():
        got = m(x, adapter_ids=["b", "a", None, "b"])
        base = m.base_model.head.original_module(m.base_model.q.base_layer(x))
    _close64(got[0], want["b"][0])  # REL64: float64, one function; another row's head is O(1) off
    _close64(got[1], want["a"][1])
    _close64(got[2], base[2])
    _close64(got[3], want["b"][3])


def test_refresh_tables_after_data_changes_and_deepcopy():
    import copy
    m = _two_headed()
    x = torch.randn(2, 8, dtype=torch.float64)
    with torch.no_grad():
        m(x, adapter_ids=["a", "b"])  # fills the cached per-slot tables
        m.base_model.q.vera_lambda_b["a"].data.fill_(-2.0)  # bypasses the version counter (documented)
    m.refresh_tables()
    m.set_adapter("a")
    with torch.no_grad():
        want_a = m(x)
        got = m(x, adapter_ids=["a", "b"])
    _close64(got[0], want_a[0])  # REL64; a stale table (lambda_b 0.3, not -2) is O(1) off
    twin = copy.deepcopy(m)
    with torch.no_grad():
        # the same ops on the same values: bit for bit
        torch.testing.assert_close(twin(x, adapter_ids=["a", "b"]), got, rtol=0, atol=0)
