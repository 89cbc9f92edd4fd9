"""Mixed batches (README "Many adapters in one batch"): one adapter per row, rows grouped by projection
class, outputs and gradients equal to running each row alone with its adapter."""
import copy

import pytest

torch = pytest.importorskip("torch")

from torch_models import TinyNet  # noqa: E402
from vera_torch import BatchError, MergeError, VeraConfig, get_vera_model  # noqa: E402
from vera_torch import functional as F  # noqa: E402
from vera_torch.heads import ModulesToSave  # noqa: E402
from vera_torch.layer import SlotTable  # noqa: E402

TARGETS = ["query", "value", "c_fc"]


def _model(dtype=torch.float64, layers=2):
    """Five adapters: a and c share a projection class (seed 5, r 8, same targets); b has another seed and r;
    d is per-module; e stores its projections. Heads: a, b and e train their own classifier copy."""
    torch.manual_seed(0)
    vd = dict(vector_dtype=dtype)
    m = get_vera_model(TinyNet(layers=layers).to(dtype), VeraConfig(r=8, target_modules=TARGETS, seed=5,
                                                       modules_to_save=["classifier"], **vd), "a")
    m.add_adapter("b", VeraConfig(r=4, target_modules=["query", "value"], seed=77, modules_to_save=["classifier"], **vd))
    m.add_adapter("c", VeraConfig(r=8, target_modules=TARGETS, seed=5, **vd))
    m.add_adapter("d", VeraConfig(r=3, target_modules=["query"], seed=1, sharing="per-module", **vd))
    m.add_adapter("e", VeraConfig(r=8, target_modules=["value"], seed=2, generator="stored",
                                  modules_to_save=["classifier"], **vd))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "vera_lambda" in n or ".copies." in n:
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(dtype))
    return m


IDS = ["a", "b", None, "c", "d", "e", "a", "b", "c"]

# A mixed batch and each row alone compute one function of a small float64 net in other orders (grouped
# products, another batch size, compiled kernels): each value differs by at most ~(terms + ops on its way,
# < 200) * 2^-53 * S per block, amplified by softmax, gelu, LayerNorm and the residuals (S / |y| and the
# gain of a block each < 10 for these nets): under 1e-11 of the output scale on any BLAS or thread count,
# while a wrong row, adapter or head copy moves the output by > 1e-2 of it.
REL64 = 1e-9


def _close64(got, want, msg=None):
    """|got - want| <= REL64 * max(1, max |want|), both float64 (the bound above)."""
    assert got.dtype == want.dtype == torch.float64, (got.dtype, want.dtype)
    torch.testing.assert_close(got, want, rtol=0, atol=REL64 * max(1.0, float(want.detach().abs().max())), msg=msg)


def _alone(m, x, ids, w=None, cat=True):
    """Each row run alone with its adapter; gradients accumulate over the rows. The outputs are
    concatenated, or with ``cat=False`` returned as they are, one per row."""
    outs = []
    for i, name in enumerate(ids):
        xi = x[i:i + 1]
        if name is None:
            with m.disable_adapter():
                y = m(xi)
        else:
            m.set_adapter(name)
            m.set_trainable(m.adapters)
            y = m(xi)
        if w is not None:
            (y * w[i:i + 1]).sum().backward()
        outs.append(y.detach() if cat else y)
    return torch.cat(outs) if cat else outs


def _same_gradients(grads: dict, want_g: dict) -> None:
    """The mixed batch's gradients equal the rows-alone ones; a trained adapter with no row in the batch has a
    zero gradient in the mixed batch (and none alone)."""
    assert want_g.keys() <= grads.keys()
    for n in grads.keys() - want_g.keys():
        assert "vera_lambda" in n and not grads[n].any(), n
    for n in want_g:
        _close64(grads[n], want_g[n], msg=n)

def test_mixed_outputs_and_gradients_equal_each_row_alone():
    m = _model()
    m.set_trainable(m.adapters)
    x = torch.randn(len(IDS), 5, 16, dtype=torch.float64, requires_grad=True)
    y = m(x, adapter_ids=IDS)
    w = torch.randn_like(y)
    (y * w).sum().backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    gx = x.grad.clone()
    m.zero_grad()
    x.grad = None
    want = _alone(m, x, IDS, w)
    _close64(y.detach(), want)  # REL64: float64, one function
    _close64(gx, x.grad)
    want_g = {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
    _same_gradients(grads, want_g)
    # each row's gradient reaches only its own adapter (the per-adapter comparison above); a trained adapter in no
    # row gets zeros: _same_gradients, and tests/distributed/test_mixed_ranks.py
    assert any(".c" in n for n in grads)


def test_one_input_projection_per_class_and_layer_input(monkeypatch):
    m = _model(torch.float32).eval()
    calls = []
    real = F._ProjectIn.apply
    monkeypatch.setattr(F._ProjectIn, "apply", staticmethod(lambda *a: calls.append(a[1].shape) or real(*a)))
    x = torch.randn(len(IDS), 5, 16)
    with torch.no_grad():
        m(x, adapter_ids=IDS)
    # per block: query reads x for classes {a, c}, {b}, {d}; value shares those and adds {e}; c_fc: {a, c}
    assert len(calls) == 2 * 5
    calls.clear()
    with torch.no_grad():
        m(x, adapter_ids=["a", "c"] * 4 + ["a"])  # two adapters, one class: one product per layer input
    assert len(calls) == 2 * 2


def test_tables_are_cached_and_adding_an_adapter_writes_only_its_rows():
    m = _model().eval()
    x = torch.randn(4, 5, 16, dtype=torch.float64)
    f64 = dict(vector_dtype=torch.float64)
    tables = lambda: [t for layer in m.vera_layers() for t in layer._tables.values()]  # noqa: E731
    with torch.no_grad():
        y = m(x, adapter_ids=["a", "c", "a", "c"])
        first = sum(t.writes for t in tables())
        assert first == 6 * 2 * 2  # 6 layers adapted by a and c, lambda_d and lambda_b, two adapters
        assert torch.equal(m(x, adapter_ids=["a", "c", "a", "c"]), y)
        assert sum(t.writes for t in tables()) == first  # nothing rewritten
        m.add_adapter("f", VeraConfig(r=8, target_modules=TARGETS, seed=5, **f64))  # the same class
        m(x, adapter_ids=["a", "f", "c", "f"])
        assert sum(t.writes for t in tables()) == first + 6 * 2  # f's rows only
        m.base_model.blocks[0].query.vera_lambda_b["a"].mul_(2)  # an in-place update (an optimiser step)
        y2 = m(x, adapter_ids=["a", "c", "a", "c"])
        assert sum(t.writes for t in tables()) == first + 6 * 2 + 1
        m.set_adapter("a")
        _close64(y2[0:1], m(x[0:1]))  # REL64: float64, one function; a stale table row is O(1) off
        m.delete_adapter("c")
        m.add_adapter("g", VeraConfig(r=8, target_modules=["query"], seed=5, **f64))  # reuses c's slot? another class
        m.add_adapter("h", VeraConfig(r=8, target_modules=TARGETS, seed=5, **f64))  # c's slot, new tensors
        yh = m(x, adapter_ids=["h"] * 4)
        m.set_adapter("h")
        _close64(yh, m(x))  # REL64


def test_linear_heads_are_one_batched_product(monkeypatch):
    m = _model().eval()
    head = m.base_model.classifier
    assert isinstance(head, ModulesToSave)
    called = []
    monkeypatch.setattr(ModulesToSave, "_loop_rows", lambda *a: called.append(1))
    x = torch.randn(len(IDS), 5, 16, dtype=torch.float64)
    with torch.no_grad():
        y = m(x, adapter_ids=IDS)
    assert not called
    _close64(y, _alone(m, x, IDS))  # REL64: float64, one function


def test_dropout_in_a_mixed_batch_is_per_row():
    """spec 3.3 with each row's own p: rows of an adapter with p = 0 see no dropout, even next to rows of an
    adapter of the same projection class with p = 0.5."""
    torch.manual_seed(0)
    m = get_vera_model(TinyNet(), VeraConfig(r=8, target_modules=TARGETS, seed=5), "a")
    m.add_adapter("c", VeraConfig(r=8, target_modules=TARGETS, seed=5, dropout=0.5))
    m.double()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "vera_lambda" in n:
                p.normal_()
    x = torch.randn(4, 5, 16, dtype=torch.float64)
    m.eval()
    with torch.no_grad():
        clean = m(x, adapter_ids=["a", "c", "a", "c"])
    m.train()
    with torch.no_grad():
        noisy = m(x, adapter_ids=["a", "c", "a", "c"])
    _close64(noisy[0::2], clean[0::2])  # REL64: float64, one function; dropout on a p = 0 row is O(1) off
    assert not torch.allclose(noisy[1::2], clean[1::2], atol=1e-3)


def test_errors():
    m = _model(torch.float32)
    x = torch.randn(3, 5, 16)
    m.set_adapter("a")
    m.merge()
    with pytest.raises(MergeError, match=r"^a model with merged adapters cannot serve mixed-adapter batches"):
        m(x, adapter_ids=["a", "b", None])
    m.unmerge()
    with pytest.raises(ValueError, match=r"^adapter_ids must be a sequence with one adapter name"):
        m(x, adapter_ids="abc")


def test_slot_table_rewrites_a_reused_slot():
    t = SlotTable()
    p, q = torch.ones(3), torch.full((3,), 2.0)
    assert torch.equal(t.get([(1, p)], (3,), torch.float32, torch.device("cpu"))[1], p)
    assert torch.equal(t.get([(1, q)], (3,), torch.float32, torch.device("cpu"))[1], q)
    assert torch.equal(t.get([(1, None)], (3,), torch.float32, torch.device("cpu"))[1], torch.zeros(3))


@pytest.mark.parametrize("head", ["linear", "dense-tanh-out_proj"])
def test_torch_compile_mixed_batch_matches_eager(head):
    torch.manual_seed(0)
    net = TinyNet(layers=1)
    if head != "linear":
        net.classifier = _ClassificationHead()
    m = get_vera_model(net, VeraConfig(r=8, target_modules=["query"], seed=5,
                                                     modules_to_save=["classifier"]), "a")
    m.add_adapter("b", VeraConfig(r=4, target_modules=["query"], seed=7, modules_to_save=["classifier"]))
    m.double()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "vera_lambda" in n or ".copies." in n:
                p.normal_()
    m.set_trainable(m.adapters)
    ids = ["a", "b", None, "a"]
    x = torch.randn(len(ids), 5, 16, dtype=torch.float64)
    y = m(x, adapter_ids=ids)
    y.sum().backward()
    g = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    m.zero_grad()
    yc = torch.compile(m)(x, adapter_ids=ids)
    yc.sum().backward()
    _close64(yc, y)  # REL64: float64, one function (compiled kernels: other orders, fma)
    assert g.keys() == {n for n, p in m.named_parameters() if p.grad is not None}
    for n, p in m.named_parameters():
        if p.grad is not None:
            _close64(p.grad, g[n], msg=n)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_mixed_batch_matches_each_row_alone():
    m = _model().cuda().eval()
    x = torch.randn(len(IDS), 5, 16, dtype=torch.float64, device="cuda")
    with torch.no_grad():
        y = m(x, adapter_ids=IDS)
        want = _alone(m, x, IDS)
    _close64(y, want)  # REL64: float64 (no TF32 on the GPU), one function
    cpu = copy.deepcopy(m).cpu()
    with torch.no_grad():
        _close64(cpu(x.cpu(), adapter_ids=IDS), y.cpu())


class _ClassificationHead(torch.nn.Module):
    """RoBERTa's classification head shape: dense -> tanh -> out_proj, dropout between (every parameter
    in an nn.Linear)."""

    def __init__(self, d=16, n=3):
        super().__init__()
        self.dense = torch.nn.Linear(d, d)
        self.dropout = torch.nn.Dropout(0.0)
        self.out_proj = torch.nn.Linear(d, n)

    def forward(self, x):
        return self.out_proj(self.dropout(torch.tanh(self.dense(x))))


class _NormHead(torch.nn.Module):
    """A head with a LayerNorm (parameters outside nn.Linear) and dropout."""

    def __init__(self, d=16, p=0.0):
        super().__init__()
        self.norm = torch.nn.LayerNorm(d)
        self.dropout = torch.nn.Dropout(p)
        self.out = torch.nn.Linear(d, 2)

    def forward(self, x):
        return self.out(self.dropout(self.norm(x)))


class _BatchNormHead(torch.nn.Module):
    """A head with buffers (running statistics): it runs once per adapter present."""

    def __init__(self, d=16):
        super().__init__()
        self.out = torch.nn.Linear(d, 2)
        self.bn = torch.nn.BatchNorm1d(2)

    def forward(self, x):
        return self.bn(self.out(x))  # x: (N, d)


@pytest.mark.parametrize("head, ids, batched", [
    (_ClassificationHead, ["a", "b", None, "c", "b", "a"], True),
    (_NormHead, ["a", "b", None, "c", "b", "a"], True),
    (torch.nn.Linear, ["a", "b", None, "c", "b", "a"], True),
    # one adapter on 6 rows, two on one each: 3 groups x 6 positions = 18 > 2 x 8 rows: per adapter
    (_NormHead, ["a"] * 6 + ["b", None], False),
    (_NormHead, ["a"] * 4 + ["b", None], True),  # 3 groups x 4 = 12 = 2 x 6 rows: at the limit, batched
    # c has no head copy: its row joins the original's group (3 groups x 4 = 12 <= 14), not a fourth (16)
    (_NormHead, ["a"] * 4 + ["b", None, "c"], True),
    (_BatchNormHead, ["a", "b", None, "c", "b", "a"], False),
    (_BatchNormHead, ["b", "b", "b"], False),  # one group, run once
])
def test_heads_run_once_over_groups_and_equal_each_row_alone(monkeypatch, head, ids, batched):
    """Outputs and gradients of a mixed batch equal each row alone (float64): a head runs once over the
    groups of rows that share a copy (one vmap or one batched matmul), never the per-adapter loop,
    unless the groups are too uneven or the head has buffers."""
    torch.manual_seed(0)
    net = TinyNet(layers=1).double()
    net.classifier = (head(16, 3) if head is torch.nn.Linear else head()).double()
    m = get_vera_model(net, VeraConfig(r=4, target_modules=["query"], seed=5, modules_to_save=["classifier"],
                                       vector_dtype=torch.float64), "a")
    m.add_adapter("b", VeraConfig(r=4, target_modules=["query"], seed=5, modules_to_save=["classifier"],
                                  vector_dtype=torch.float64))
    m.add_adapter("c", VeraConfig(r=4, target_modules=["query"], seed=9, vector_dtype=torch.float64))  # no head
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "vera_lambda" in n or ".copies." in n:
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    if head is _BatchNormHead:
        m.eval()  # running statistics: each row alone and the batch see the same normalisation
    loops = []
    real = ModulesToSave._loop_rows
    monkeypatch.setattr(ModulesToSave, "_loop_rows", lambda *a: loops.append(1) or real(*a))
    m.set_trainable(m.adapters)
    x = torch.randn(len(ids), 5, 16, dtype=torch.float64, requires_grad=True)
    y = m(x, adapter_ids=ids)
    assert bool(loops) is not batched
    w = torch.randn_like(y)
    (y * w).sum().backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    assert any(".copies.b." in n for n in grads)
    m.zero_grad()
    want = _alone(m, x, ids, w)
    _close64(y.detach(), want)  # REL64: float64, one function
    want_g = {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
    _same_gradients(grads, want_g)


def test_head_dropout_runs_inside_the_vmapped_groups():
    """Training mode with the head's dropout at p = 1: every row's output is its own copy's bias (the
    dropout ran on every group, and each group used its own parameters)."""
    torch.manual_seed(0)
    net = TinyNet(layers=1)
    net.classifier = _NormHead(p=1.0)
    m = get_vera_model(net, VeraConfig(r=4, target_modules=["query"], seed=5, modules_to_save=["classifier"]), "a")
    m.add_adapter("b", VeraConfig(r=4, target_modules=["query"], seed=5, modules_to_save=["classifier"]))
    with torch.no_grad():
        for i, name in enumerate(["a", "b"]):
            m.base_model.classifier.copies[name].out.bias.fill_(i + 1.0)
    m.train()
    y = m(torch.randn(4, 5, 16), adapter_ids=["a", "b", None, "b"])
    bias0 = m.base_model.classifier.original_module.out.bias.detach()
    want = torch.stack([torch.full((2,), 1.0), torch.full((2,), 2.0), bias0, torch.full((2,), 2.0)])
    torch.testing.assert_close(y.detach(), want, rtol=0, atol=0)


class _PairHead(torch.nn.Module):
    """A head returning a tuple, a list, a dict or (wrongly) a float, as ``kind`` says."""

    def __init__(self, kind, d=16):
        super().__init__()
        self.kind = kind
        self.out = torch.nn.Linear(d, 2)

    def forward(self, x):
        y = self.out(x)
        return {"tuple": lambda: (y, 2 * y), "list": lambda: [y, y + 1],
                "dict": lambda: {"logits": y, "scaled": 3 * y}, "float": lambda: float(y.sum())}[self.kind]()


def _two_heads(head):
    """TinyNet with ``head`` as its classifier, adapters a and b with random head copies, in eval mode,
    all in float64."""
    torch.manual_seed(0)
    net = TinyNet(layers=1)
    net.classifier = head
    m = get_vera_model(net, VeraConfig(r=4, target_modules=["query"], seed=5, modules_to_save=["classifier"]), "a")
    m.add_adapter("b", VeraConfig(r=4, target_modules=["query"], seed=5, modules_to_save=["classifier"]))
    m.double()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if ".copies." in n:
                p.normal_()
    m.eval()
    return m


@pytest.mark.parametrize("kind", ["tuple", "list", "dict"])
def test_a_head_returning_several_tensors_is_ungrouped_into_batch_order(kind):
    m = _two_heads(_PairHead(kind))
    ids = ["b", None, "a", "b"]
    x = torch.randn(len(ids), 5, 16, dtype=torch.float64)
    with torch.no_grad():
        y = m(x, adapter_ids=ids)
    assert type(y) is {"tuple": tuple, "list": list, "dict": dict}[kind]
    with torch.no_grad():
        rows = [_alone(m, x[i:i + 1], [n], cat=False)[0] for i, n in enumerate(ids)]
    parts = list(y.values()) if kind == "dict" else list(y)
    for j, part in enumerate(parts):
        want_j = torch.cat([list(r.values())[j] if kind == "dict" else r[j] for r in rows])
        _close64(part, want_j)  # REL64: float64, one function; parts out of batch order are O(1) off


def test_a_head_returning_no_tensor_in_a_mixed_batch_is_refused():
    torch.manual_seed(0)
    net = TinyNet(layers=1)
    net.classifier = _PairHead("float")
    m = get_vera_model(net, VeraConfig(r=4, target_modules=["query"], seed=5, modules_to_save=["classifier"]), "a")
    with torch.no_grad(), pytest.raises(BatchError, match=r"^a head in a mixed batch returned float; expected tensors$"):
        m(torch.randn(2, 5, 16), adapter_ids=["a", None])


class _BranchHead(torch.nn.Module):
    """A head with a Python branch on a value: vmap cannot run it, the per-adapter loop can."""

    def __init__(self, d=16):
        super().__init__()
        self.out = torch.nn.Linear(d, 2)

    def forward(self, x):
        y = self.out(x)
        return y if float(y.sum()) > -1e9 else -y


def test_a_head_vmap_cannot_run_warns_once_and_runs_per_adapter():
    m = _two_heads(_BranchHead())
    ids, x = ["b", None, "a"], torch.randn(3, 5, 16, dtype=torch.float64)
    with torch.no_grad(), pytest.warns(RuntimeWarning, match=r"^this _BranchHead head cannot run under torch\.func\.vmap"):
        y = m(x, adapter_ids=ids)
    import warnings
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(m(x, adapter_ids=ids), y, rtol=0, atol=0)  # no second warning
    with torch.no_grad():
        want = _alone(m, x, ids)
    _close64(y, want)  # REL64: float64, one function


def _norm_head_in_float64(mod, x):
    """_NormHead's eval forward with its float32 parameters widened (exactly) to float64."""
    w = {n: p.double() for n, p in mod.named_parameters()}
    h = torch.nn.functional.layer_norm(x, (x.shape[-1],), w["norm.weight"], w["norm.bias"], mod.norm.eps)
    return torch.nn.functional.linear(h, w["out.weight"], w["out.bias"])


def test_copies_of_another_dtype_run_per_adapter():
    """A head copy cast to float32 cannot be stacked with float64 ones: the head runs per adapter and
    each row still equals itself alone. (The copy's forward widens its float32 parameters exactly, so
    every row computes in float64 and the REL64 bound applies.)"""
    torch.manual_seed(0)
    net = TinyNet(layers=1)
    net.classifier = _NormHead()
    m = get_vera_model(net, VeraConfig(r=4, target_modules=["query"], seed=5, modules_to_save=["classifier"]), "a")
    m.add_adapter("b", VeraConfig(r=4, target_modules=["query"], seed=5, modules_to_save=["classifier"]))
    m.double()
    head = m.base_model.classifier
    assert all(p.requires_grad for c in head.copies.values() for p in c.parameters())  # copies train (PEFT's rule)
    head.copies["b"].float()
    head.copies["b"].forward = lambda x, mod=head.copies["b"]: _norm_head_in_float64(mod, x)
    m.eval()
    ids, x = ["b", None, "a", "b"], torch.randn(4, 5, 16, dtype=torch.float64)
    with torch.no_grad():
        y = m(x, adapter_ids=ids)
        want = _alone(m, x, ids)
    _close64(y, want)  # REL64: float64, one function


def test_a_linear_head_on_every_token_and_vectors_wider_than_the_model():
    """A head applied to (N, T, d) inputs (the grouped matmul keeps the token axis), on a float32 model
    whose vectors are float64 (the mixed delta is computed in float64 and added after a cast)."""
    from torch_models import Headed
    torch.manual_seed(0)
    m = get_vera_model(Headed(), VeraConfig(r=4, target_modules=["q"], seed=5, modules_to_save=["head"],
                                            vector_dtype=torch.float64), "a")
    m.add_adapter("b", VeraConfig(r=4, target_modules=["q"], seed=5, modules_to_save=["head"],
                                  vector_dtype=torch.float64))
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "vera_lambda" in n or ".copies." in n:
                p.normal_()
    m.eval()
    x = torch.randn(5, 3, 8)
    for ids in (["b", None, "a", "b", "a"], ["b", "a", "b", "a", "a"]):  # with base rows, and every row adapted
        with torch.no_grad():
            y = m(x, adapter_ids=ids)
            want = _alone(m, x, ids)
        assert y.shape == (5, 3, 2) and y.dtype == torch.float32
        gap = (y - want).abs().double()
        allowed = 2 * _headed_float32_bound(m, x, ids)  # each side within the bound of the exact value
        assert bool((gap <= allowed).all()), float((gap / allowed).max())


def _headed_float32_bound(m, x, ids):
    """Per element, how far a float32 evaluation of the Headed model (q with the row's adapter, tanh,
    the row's head copy) may be from the exact value, on any machine: q within spec 5.2's forward bound
    (its sums are float32 or wider), tanh 1-Lipschitz and within 4 ulps of the exact tanh (|tanh| <= 1:
    4 eps), then the head's 6-term sum, product and bias (7 roundings of u = 2^-24) on |t| <= 1."""
    from vera_ref.tolerance import bound, constant, forward_magnitude
    eps = 2.0**-23
    q = m.base_model.q
    W, b = (t.detach().double().numpy() for t in (q.base_layer.weight, q.base_layer.bias))
    c_z = constant("forward", "float32", N=x.shape[0] * x.shape[1], in_features=8, out_features=6, r=4)
    e_head = (1 + eps / 2) ** 7 - 1
    out = []
    for i, name in enumerate(ids):
        xi = x[i].double().numpy()  # (T, 8)
        if name is None:
            A, B, ld, lb = torch.zeros(4, 8), torch.zeros(6, 4), torch.zeros(4), torch.zeros(6)
            head = m.base_model.head.original_module
        else:
            (A, B), ld, lb = q.sliced_projection(name, "cpu"), q.vera_lambda_d[name], q.vera_lambda_b[name]
            head = m.base_model.head.copies[name]
        A, B, ld, lb = (t.detach().double().numpy() for t in (A, B, ld, lb))
        dz = bound(forward_magnitude(xi, W, b, A, B, ld, lb), "float32", c_z)  # (T, 6)
        Wh, bh = head.weight.detach().double().abs(), head.bias.detach().double().abs()
        dt = torch.from_numpy(dz) + 4 * eps
        out.append(dt @ Wh.T + e_head * (Wh.sum(1) + bh))  # (T, 2)
    return torch.stack(out)


class _ScaledHead(torch.nn.Module):
    """A head taking a second argument: it runs once per adapter present."""

    def __init__(self, d=16):
        super().__init__()
        self.out = torch.nn.Linear(d, 2)

    def forward(self, x, scale):
        return self.out(x) * scale


class _FlatNet(torch.nn.Module):
    """A layer on (N, T, d), then a head on the tokens flattened to (N * T, d): the head's rows are not
    the batch's rows."""

    def __init__(self, head):
        super().__init__()
        self.q = torch.nn.Linear(16, 16)
        self.classifier = head

    def forward(self, x):
        h = self.q(x).reshape(-1, 16)
        return self.classifier(h, 2.0) if isinstance(self.classifier.original_module, _ScaledHead) \
            else self.classifier(h)


@pytest.mark.parametrize("head", [_NormHead, _BatchNormHead, _ScaledHead])
def test_a_head_input_without_one_row_per_entry_is_refused(head):
    m = get_vera_model(_FlatNet(head()), VeraConfig(r=4, target_modules=["q"], seed=5,
                                                    modules_to_save=["classifier"]), "a")
    with torch.no_grad(), pytest.raises(BatchError, match=r"^adapter_ids has 2 entries but this module's input "
                                                           r"has 6 rows \(dim 0\)$"):
        m(torch.randn(2, 3, 16), adapter_ids=["a", None])


def test_the_per_adapter_loop_runs_the_original_once_for_rows_without_a_copy():
    """Rows with no adapter and rows whose adapter has no head copy share one run of the original head."""
    torch.manual_seed(0)
    net = TinyNet(layers=1)
    net.classifier = _BatchNormHead()
    m = get_vera_model(net, VeraConfig(r=4, target_modules=["query"], seed=5, modules_to_save=["classifier"]), "a")
    m.add_adapter("c", VeraConfig(r=4, target_modules=["query"], seed=9))  # no head copy
    m.eval()
    calls = []
    m.base_model.classifier.original_module.register_forward_pre_hook(lambda mod, args: calls.append(args[0].shape[0]))
    with torch.no_grad():
        m(torch.randn(4, 5, 16), adapter_ids=["a", None, "c", None])
    assert calls == [3]
