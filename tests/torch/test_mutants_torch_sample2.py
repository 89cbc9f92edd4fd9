"""Kill-tests for vera_torch mutants of the second sampled campaign (tools/mutate.py --package vera_torch
--sample 200 --seed 2, issue 15). Expected values come from the float64 NumPy reference ``vera_ref``
(or from the spec's rules), never from vera_torch itself."""
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import vera_ref  # noqa: E402
from vera_ref.errors import ProjectionError  # noqa: E402
from vera_ref.tolerance import compare, constant, forward_magnitude, merge_magnitude  # noqa: E402
from vera_torch.philox import projection  # noqa: E402


@pytest.mark.parametrize("group", [-1, True, False, 1.5, 2**32, np.int64(-1), "1", None])
def test_projection_refuses_the_groups_the_reference_refuses(group):
    # spec 1.4 / 2.4: the group is a counter word, an integer in [0, 2^32)
    with pytest.raises(ProjectionError) as ref:
        vera_ref.projection(3, 2, 4, 4, group)
    msg = f"group must be in [0, 2^32), got {group}"
    assert str(ref.value) == msg
    with pytest.raises(ProjectionError, match=r"^" + re.escape(msg) + r"$"):  # the reference's words
        projection(3, 2, 4, 4, group)


@pytest.mark.parametrize("group", [0, 1, 2**32 - 1, np.uint32(7)])
def test_projection_accepts_every_group_word(group):
    A, B = projection(3, 2, 4, 5, group)
    a, b = vera_ref.projection(3, 2, 4, 5, int(group))
    assert np.array_equal(A.numpy(), a) and np.array_equal(B.numpy(), b)


# --- VeraConfig: d_initial must be finite in the vectors' dtype (spec 3.9, 4.3) -----------------

from torch import nn  # noqa: E402

from vera_ref.dtypes import round_to  # noqa: E402
from vera_ref.errors import ModelMismatchError  # noqa: E402
from vera_torch import VeraConfig, VeraModel  # noqa: E402
from vera_torch.errors import ConfigError  # noqa: E402
from torch_models import Headed, QV  # noqa: E402

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


@pytest.mark.parametrize("name", list(DTYPES))
@pytest.mark.parametrize("d", [1e300, -1e300, 1e38, 3.5e38, 65504.0, 65519.0, 65520.0, -70000.0, 0.1])
def test_d_initial_is_refused_exactly_when_it_overflows_the_vector_dtype(name, d):
    with np.errstate(over="ignore"):
        finite = bool(np.isfinite(round_to(np.float64(d), name)))  # the NumPy reference's rounding
    if finite:
        c = VeraConfig(r=2, target_modules=["q"], d_initial=d, vector_dtype=DTYPES[name])
        assert c.d_initial == d
    else:
        msg = f"d_initial: {d!r} overflows vector_dtype {name}"
        with pytest.raises(ConfigError, match=r"^" + re.escape(msg) + r"$"):
            VeraConfig(r=2, target_modules=["q"], d_initial=d, vector_dtype=DTYPES[name])


@np.errstate(over="ignore")
def test_d_initial_overflow_cases_are_the_expected_ones():
    # hand-checked: float16's largest finite is 65504 and 65520 rounds to inf; float32's is ~3.4028e38
    assert not np.isfinite(round_to(np.float64(65520.0), "float16"))
    assert np.isfinite(round_to(np.float64(65519.0), "float16"))
    assert not np.isfinite(round_to(np.float64(3.5e38), "float32"))
    assert np.isfinite(round_to(np.float64(1e300), "float64"))


# --- load_adapter: modules that VeRA cannot adapt are refused (README "PyTorch") ----------------

@pytest.mark.parametrize("module, dims", [
    ("head", (6, 2)),                     # a module saved whole (modules_to_save)
    ("head.original_module", (6, 2)),     # inside the head wrapper
    ("head.copies.a", (6, 2)),            # a head copy
    ("q.base_layer", (8, 6)),             # part of an adapted layer
])
def test_an_adapter_naming_a_saved_or_wrapped_module_is_refused(module, dims):
    torch.manual_seed(0)
    m = VeraModel(Headed(), VeraConfig(r=2, target_modules=["q"], modules_to_save=["head"]), adapter_name="a")
    ad = vera_ref.new_adapter([(module, *dims)], r=2, seed=3)
    msg = (f"modules: {module!r} is a module saved whole (modules_to_save) or part of an adapted layer, "
           "not a layer VeRA can adapt")
    with pytest.raises(ModelMismatchError, match=r"^" + re.escape(msg) + r"$"):
        m.load_adapter(ad, "b", activate=False)
    assert list(m.vera_configs) == ["a"]


# --- extra tensors of a head whose dtype has no file name (spec 4.3 extra_tensors) -----------------

class Normed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(8, 6)
        self.head = nn.BatchNorm1d(6)

    def forward(self, x):
        return self.head(self.q(x))


def test_a_head_buffer_without_a_file_dtype_is_stored_as_float32(tmp_path):
    import json
    import struct
    torch.manual_seed(0)
    m = VeraModel(Normed(), VeraConfig(r=2, target_modules=["q"], modules_to_save=["head"]))
    m.train()
    for _ in range(3):
        m(torch.randn(4, 8))
    path = tmp_path / "a.safetensors"
    m.save_adapter(path)
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    t = header["head.num_batches_tracked"]  # int64 in torch; the file's dtypes are floats (spec 4.1)
    assert (t["dtype"], t["shape"]) == ("F32", [])
    b, e = t["data_offsets"]
    assert np.frombuffer(raw[8 + n + b:8 + n + e], "<f4").tolist() == [3.0]
    assert header["head.running_mean"]["dtype"] == "F32"
    torch.manual_seed(0)  # the same base weights (the file's fingerprint)
    fresh = VeraModel(Normed(), VeraConfig(r=2, target_modules=["q"], modules_to_save=["head"]), adapter_name="x")
    fresh.load_adapter(path, "default")
    copy = fresh.base_model.head.copies["default"]
    assert copy.num_batches_tracked.dtype == torch.int64 and int(copy.num_batches_tracked) == 3


# --- mixed batches: a head whose input rows are not the batch's rows --------------------------------

class Flattening(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(8, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x):  # (N, T, 8) -> the head sees (N * T, 6)
        return self.head(self.q(x).reshape(-1, 6))


def test_a_head_fed_other_rows_than_the_batch_is_refused():
    from vera_torch import BatchError
    torch.manual_seed(0)
    m = VeraModel(Flattening(), VeraConfig(r=2, target_modules=["q"], modules_to_save=["head"]), adapter_name="a")
    m.add_adapter("b", VeraConfig(r=2, target_modules=["q"], modules_to_save=["head"], seed=4))
    x = torch.randn(2, 3, 8)
    msg = "adapter_ids has 2 entries but this module's input has 6 rows (dim 0)"
    for grad in (False, True):
        with torch.set_grad_enabled(grad), pytest.raises(BatchError, match=r"^" + re.escape(msg) + r"$"):
            m(x, adapter_ids=["a", "b"])


def test_a_deleted_adapter_frees_its_head_slot():
    # "deleting an adapter forgets it everywhere": its head copy and its row of the head's stacked weights
    torch.manual_seed(0)
    m = VeraModel(Headed(), VeraConfig(r=2, target_modules=["q"], modules_to_save=["head"]), adapter_name="a")
    m.add_adapter("b", VeraConfig(r=2, target_modules=["q"], modules_to_save=["head"], seed=4))
    head = m.base_model.head
    assert head.slots == {"a": 1, "b": 2}
    m.delete_adapter("a")
    assert head.slots == {"b": 2} and list(head.copies) == ["b"]
    m.add_adapter("c", VeraConfig(r=2, target_modules=["q"], modules_to_save=["head"], seed=5))
    assert head.slots == {"b": 2, "c": 1}  # the freed slot is reused


# --- PEFT checkpoints (README "PyTorch"): from_peft / load_peft, the checkpoint written by vera_ref ---

def test_from_peft_and_load_peft_read_the_checkpoint(tmp_path):
    from vera_ref.peft_interop import adapter_to_peft
    ad = vera_ref.new_adapter([("q", 8, 6), ("v", 6, 5)], r=2, seed=3, generator="peft-mt19937")
    rng = np.random.default_rng(0)
    for d in (ad.lambda_d, ad.lambda_b):
        for k in d:
            d[k] = rng.standard_normal(d[k].shape).astype(np.float32)
    adapter_to_peft(ad, tmp_path, model_modules=["q", "v"])
    torch.manual_seed(0)
    vm = VeraModel.from_peft(QV(), tmp_path, "p")
    assert list(vm.vera_configs) == ["p"] and vm.active_adapter == "p"
    torch.manual_seed(0)
    vm2 = VeraModel(QV())
    assert vm2.load_peft(tmp_path, "z") == "z"
    for m in (vm, vm2):
        name = m.active_adapter if m is vm else "z"
        for mod in ("q", "v"):
            layer = m.base_model.get_submodule(mod)
            assert np.array_equal(layer.vera_lambda_d[name].detach().numpy(), ad.lambda_d[mod])
            assert np.array_equal(layer.vera_lambda_b[name].detach().numpy(), ad.lambda_b[mod])


# --- dropout on the adapter input while training (spec 3.3), against the NumPy reference ------------

def _within(got, ref, S, quantity, dtype="float32", **sizes):
    """spec 5.2: got against the float64 reference with the C derived for ``quantity`` (5.2.3)."""
    chk = compare(got, ref, S, dtype, constant(quantity, dtype, **sizes))
    assert chk.ok, chk.describe()


def test_training_dropout_matches_the_reference_with_the_same_mask():
    from vera_ref.layer import forward as ref_forward
    torch.manual_seed(0)
    m = VeraModel(nn.Sequential(nn.Linear(8, 6)), VeraConfig(r=2, target_modules=["0"], seed=3, dropout=0.5))
    layer = m.base_model[0]
    with torch.no_grad():
        layer.vera_lambda_b["default"].copy_(torch.linspace(-1.0, 1.0, 6))
        layer.vera_lambda_d["default"].copy_(torch.tensor([0.7, -1.3]))
    m.train()
    x = torch.randn(5, 8)
    torch.manual_seed(11)
    mask = (nn.functional.dropout(torch.ones_like(x), 0.5, True) != 0).numpy()
    assert 0 < mask.sum() < mask.size  # some inputs dropped, some kept
    torch.manual_seed(11)  # the same draw inside the forward pass
    with torch.no_grad():
        got = m(x).double().numpy()
    A, B = vera_ref.projection(3, 2, 8, 6)
    args = (x.double().numpy(), layer.weight.detach().double().numpy(),
            layer.base_layer.bias.detach().double().numpy(), A, B,
            np.array([0.7, -1.3], dtype=np.float32).astype(np.float64),
            np.linspace(-1.0, 1.0, 6, dtype=np.float32).astype(np.float64))
    want = ref_forward(*args, dropout_mask=mask, dropout=0.5)
    _within(got, want, forward_magnitude(*args, dropout_mask=mask, dropout=0.5), "forward",
            N=5, in_features=8, out_features=6, r=2)
    no_drop = ref_forward(x.double().numpy(), layer.weight.detach().double().numpy(),
                          layer.base_layer.bias.detach().double().numpy(), A, B,
                          np.array([0.7, -1.3]), np.linspace(-1.0, 1.0, 6, dtype=np.float32).astype(np.float64))
    assert np.abs(got - no_drop).max() > 1e-3  # the mask matters at this scale


def test_training_dropout_in_a_mixed_batch_of_some_rows_matches_the_reference():
    # the adapter's class holds rows 0 and 2 only; each row's own p (spec 3.3), the mask drawn for those rows
    from vera_ref.layer import forward as ref_forward
    torch.manual_seed(0)
    m = VeraModel(nn.Sequential(nn.Linear(8, 6)), VeraConfig(r=2, target_modules=["0"], seed=3, dropout=0.5),
                  adapter_name="a")
    layer = m.base_model[0]
    with torch.no_grad():
        layer.vera_lambda_b["a"].copy_(torch.linspace(-1.0, 1.0, 6))
        layer.vera_lambda_d["a"].copy_(torch.tensor([0.7, -1.3]))
    m.train()
    x = torch.randn(4, 3, 8)  # (rows, tokens, in): dim 1 is longer than the class's row count
    torch.manual_seed(11)
    keep = (torch.rand(2, 3, 8) >= 0.5).numpy()
    assert 0 < keep.sum() < keep.size
    torch.manual_seed(11)
    with torch.no_grad():
        got = m(x, adapter_ids=["a", None, "a", None]).double().numpy()
    A, B = vera_ref.projection(3, 2, 8, 6)
    W, b = layer.weight.detach().double().numpy(), layer.base_layer.bias.detach().double().numpy()
    xs = x.double().numpy()
    lb = np.linspace(-1.0, 1.0, 6, dtype=np.float32).astype(np.float64)
    ld = np.array([0.7, -1.3], dtype=np.float32).astype(np.float64)
    sizes = dict(N=6, in_features=8, out_features=6, r=2)
    kw = dict(dropout_mask=keep, dropout=0.5)
    want = ref_forward(xs[[0, 2]], W, b, A, B, ld, lb, **kw)
    _within(got[[0, 2]], want, forward_magnitude(xs[[0, 2]], W, b, A, B, ld, lb, **kw), "forward", **sizes)
    base = (xs[[1, 3]], W, b, A, B, ld, np.zeros(6))  # rows without an adapter: the base layer only
    _within(got[[1, 3]], ref_forward(*base), forward_magnitude(*base), "forward", **sizes)


# --- a head served row by row keeps its other positional arguments ------------------------------------

class ScaledHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 2)
        self.norm = nn.LayerNorm(2)  # forward takes two arguments: run once per adapter present

    def forward(self, h, scale):
        return self.norm(self.lin(h)) * scale


class TwoArgs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(8, 6)
        self.head = ScaledHead()

    def forward(self, x):
        return self.head(self.q(x), 3.0)


def _np_head(head, h, scale):
    W, b = head.lin.weight.detach().double().numpy(), head.lin.bias.detach().double().numpy()
    g, beta = head.norm.weight.detach().double().numpy(), head.norm.bias.detach().double().numpy()
    v = h @ W.T + b
    v = (v - v.mean(-1, keepdims=True)) / np.sqrt(v.var(-1, keepdims=True) + head.norm.eps)
    return (v * g + beta) * scale


def test_a_head_run_per_adapter_gets_every_argument():
    torch.manual_seed(0)
    f64 = dict(vector_dtype=torch.float64)  # all in float64: LayerNorm is outside the bound of spec 5.2
    m = VeraModel(TwoArgs().double(), VeraConfig(r=2, target_modules=["q"], modules_to_save=["head"], **f64),
                  adapter_name="a")
    m.add_adapter("b", VeraConfig(r=2, target_modules=["q"], modules_to_save=["head"], seed=4, **f64))
    with torch.no_grad():
        m.base_model.head.copies["b"].lin.weight.mul_(-2.0)
    x = torch.randn(3, 8, dtype=torch.float64)
    with torch.no_grad():
        got = m(x, adapter_ids=["b", None, "a"]).numpy()
    q = m.base_model.q.base_layer  # lambda_b = 0: the adapters add nothing to q (spec 3.9)
    h = x.double().numpy() @ q.weight.detach().double().numpy().T + q.bias.detach().double().numpy()
    head = m.base_model.head
    for i, mod in enumerate([head.copies["b"], head.original_module, head.copies["a"]]):
        want = _np_head(mod, h[i], 3.0)  # |want| <= 3 * (|gamma| + |beta|) ~ 3
        # float64 both: sums of <= 8 terms (~20 ops, 2^-53 each) times LayerNorm's gain over 2 values,
        # <= 1 / sqrt(eps = 1e-5) ~ 316: under 1e-11 on any machine; the wrong copy or no scale is O(1) off
        np.testing.assert_allclose(got[i], want, rtol=0, atol=1e-9)


# --- deleting frees the adapter's table slot; attribute pass-through before the model exists ---------

def test_deleting_adapters_frees_their_slots_and_classes():
    torch.manual_seed(0)
    m = VeraModel(QV(), VeraConfig(r=2, target_modules=["q", "v"], seed=5), adapter_name="a")
    m.add_adapter("b", VeraConfig(r=2, target_modules=["q", "v"], seed=5))  # the same projection class
    key = m._class_of["a"]
    assert m._class_of["b"] == key and m._slots == {key: {"a": 1, "b": 2}}
    m.delete_adapter("a")
    assert m._slots == {key: {"b": 2}} and "a" not in m._class_of
    assert list(m.vera_modules) == ["b"] and list(m.vera_configs) == ["b"]
    m.add_adapter("c", VeraConfig(r=2, target_modules=["q", "v"], seed=5))
    assert m._slots == {key: {"b": 2, "c": 1}}  # the freed slot is reused
    m.delete_adapter("b")
    m.delete_adapter("c")
    assert m._slots == {} and m._class_of == {} and m.vera_modules == {} and m.vera_configs == {}


def test_a_model_not_yet_built_has_no_attributes():
    # attribute pass-through must not recurse when base_model itself is missing (unpickling, __new__)
    bare = VeraModel.__new__(VeraModel)
    nn.Module.__init__(bare)
    for name in ("base_model", "config", "anything"):
        with pytest.raises(AttributeError, match=r"^'VeraModel' object has no attribute 'base_model'$"):
            getattr(bare, name)
        assert not hasattr(bare, name)


def test_leaving_disable_adapter_merges_the_merged_adapter_back():
    from vera_ref.layer import delta_weight
    torch.manual_seed(0)
    m = VeraModel(nn.Sequential(nn.Linear(8, 6)), VeraConfig(r=2, target_modules=["0"], seed=3), adapter_name="a")
    layer = m.base_model[0]
    with torch.no_grad():
        layer.vera_lambda_b["a"].copy_(torch.linspace(-1.0, 1.0, 6))
    w0 = layer.weight.detach().double().numpy().copy()
    A, B = vera_ref.projection(3, 2, 8, 6)
    vectors = (np.full(2, 0.1, np.float32).astype(np.float64),
               np.linspace(-1.0, 1.0, 6, dtype=np.float32).astype(np.float64))
    merged = w0 + delta_weight(A, B, *vectors, 8, 6)
    S = merge_magnitude(w0, A, B, *vectors)
    m.merge()
    _within(layer.weight.detach().double().numpy(), merged, S, "merge", r=2)
    with m.disable_adapter():
        assert np.array_equal(layer.weight.detach().double().numpy(), w0)
    assert layer.merged == ["a"]
    _within(layer.weight.detach().double().numpy(), merged, S, "merge", r=2)


def test_to_adapter_checks_the_name_and_records_the_fingerprint_by_default():
    from vera_torch.errors import AdapterNameError
    torch.manual_seed(0)
    m = VeraModel(QV(), VeraConfig(r=2, target_modules=["q", "v"], seed=5), adapter_name="a")
    with pytest.raises(AdapterNameError):
        m.to_adapter("nope")
    fp = m.to_adapter("a").config.base_model["fingerprint"]
    assert fp == vera_ref.base_fingerprint({n: m.base_model.get_submodule(n).weight.detach().numpy()
                                            for n in ("q", "v")}, m.to_adapter("a").config.modules)
    assert not m.to_adapter("a", fingerprint=False).config.base_model
    assert m.to_adapter("a").config.tensor_layout == "per-module"  # spec 4.3 default; packed on request only
    assert m.to_adapter("a", packed=True).config.tensor_layout == "packed"


@pytest.mark.parametrize("counter", [(0, 0, 0, 0), (0xFFFFFFFF, 0xFFFFFFFF, 1, 0xABCDEF01), (5, 7, 0, 3)])
def test_philox_words_on_plain_int_counters(counter):
    """spec 1.2 with every counter word a Python int (the divmod branch), against vera_ref's scalar Philox."""
    from vera_ref.philox import philox4x32_scalar
    from vera_torch.philox import philox_words
    key = (0x12345678, 0x9ABCDEF0)
    got = philox_words(*counter, key)
    assert tuple(int(w) for w in got) == philox4x32_scalar(counter, key)
