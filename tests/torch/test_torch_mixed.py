"""Mixed batches (README "Many adapters in one batch"): one adapter per row, rows grouped by projection
class, outputs and gradients equal to running each row alone with its adapter."""
import copy

import pytest

torch = pytest.importorskip("torch")

from torch_models import TinyNet  # noqa: E402
from vera_torch import MergeError, VeraConfig, get_vera_model  # noqa: E402
from vera_torch import functional as F  # noqa: E402
from vera_torch.layer import ModulesToSave, SlotTable  # noqa: E402

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


def _alone(m, x, ids, w=None):
    """Each row run alone with its adapter; gradients accumulate over the rows."""
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
        outs.append(y.detach())
    return torch.cat(outs)


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
    torch.testing.assert_close(y.detach(), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gx, x.grad, rtol=1e-12, atol=1e-12)
    want_g = {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
    assert grads.keys() == want_g.keys()
    for n in grads:
        torch.testing.assert_close(grads[n], want_g[n], rtol=1e-11, atol=1e-11, msg=n)
    # each row's gradient reaches only its own adapter: f, in no row, gets none
    assert any(".c" in n for n in grads) and not any(n.endswith(".f") for n in grads)


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
    m = _model(torch.float32).eval()
    x = torch.randn(4, 5, 16)
    tables = lambda: [t for layer in m.vera_layers() for t in layer._tables.values()]  # noqa: E731
    with torch.no_grad():
        y = m(x, adapter_ids=["a", "c", "a", "c"])
        first = sum(t.writes for t in tables())
        assert first == 6 * 2 * 2  # 6 layers adapted by a and c, lambda_d and lambda_b, two adapters
        assert torch.equal(m(x, adapter_ids=["a", "c", "a", "c"]), y)
        assert sum(t.writes for t in tables()) == first  # nothing rewritten
        m.add_adapter("f", VeraConfig(r=8, target_modules=TARGETS, seed=5))  # the same class
        m(x, adapter_ids=["a", "f", "c", "f"])
        assert sum(t.writes for t in tables()) == first + 6 * 2  # f's rows only
        m.base_model.blocks[0].query.vera_lambda_b["a"].mul_(2)  # an in-place update (an optimiser step)
        y2 = m(x, adapter_ids=["a", "c", "a", "c"])
        assert sum(t.writes for t in tables()) == first + 6 * 2 + 1
        m.set_adapter("a")
        torch.testing.assert_close(y2[0:1], m(x[0:1]), rtol=1e-6, atol=1e-6)
        m.delete_adapter("c")
        m.add_adapter("g", VeraConfig(r=8, target_modules=["query"], seed=5))  # reuses c's slot? another class
        m.add_adapter("h", VeraConfig(r=8, target_modules=TARGETS, seed=5))  # c's slot, new tensors
        yh = m(x, adapter_ids=["h"] * 4)
        m.set_adapter("h")
        torch.testing.assert_close(yh, m(x), rtol=1e-6, atol=1e-6)


def test_linear_heads_are_one_batched_product(monkeypatch):
    m = _model(torch.float32).eval()
    head = m.base_model.classifier
    assert isinstance(head, ModulesToSave)
    called = []
    monkeypatch.setattr(ModulesToSave, "_loop_rows", lambda *a: called.append(1))
    x = torch.randn(len(IDS), 5, 16)
    with torch.no_grad():
        y = m(x, adapter_ids=IDS)
    assert not called
    assert torch.allclose(y, _alone(m, x, IDS), atol=1e-5)


def test_dropout_in_a_mixed_batch_is_per_row():
    """spec 3.3 with each row's own p: rows of an adapter with p = 0 see no dropout, even next to rows of an
    adapter of the same projection class with p = 0.5."""
    torch.manual_seed(0)
    m = get_vera_model(TinyNet(), VeraConfig(r=8, target_modules=TARGETS, seed=5), "a")
    m.add_adapter("c", VeraConfig(r=8, target_modules=TARGETS, seed=5, dropout=0.5))
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "vera_lambda" in n:
                p.normal_()
    x = torch.randn(4, 5, 16)
    m.eval()
    with torch.no_grad():
        clean = m(x, adapter_ids=["a", "c", "a", "c"])
    m.train()
    with torch.no_grad():
        noisy = m(x, adapter_ids=["a", "c", "a", "c"])
    torch.testing.assert_close(noisy[0::2], clean[0::2], rtol=1e-6, atol=1e-6)
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
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "vera_lambda" in n or ".copies." in n:
                p.normal_()
    m.set_trainable(m.adapters)
    ids = ["a", "b", None, "a"]
    x = torch.randn(len(ids), 5, 16)
    y = m(x, adapter_ids=ids)
    y.sum().backward()
    g = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    m.zero_grad()
    yc = torch.compile(m)(x, adapter_ids=ids)
    yc.sum().backward()
    torch.testing.assert_close(yc, y, rtol=1e-5, atol=1e-5)
    assert g.keys() == {n for n, p in m.named_parameters() if p.grad is not None}
    for n, p in m.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(p.grad, g[n], rtol=1e-4, atol=1e-4, msg=n)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_mixed_batch_matches_each_row_alone():
    m = _model(torch.float32).cuda().eval()
    x = torch.randn(len(IDS), 5, 16, device="cuda")
    with torch.no_grad():
        y = m(x, adapter_ids=IDS)
        want = _alone(m, x, IDS)
    torch.testing.assert_close(y, want, rtol=1e-4, atol=1e-4)
    cpu = copy.deepcopy(m).cpu()
    with torch.no_grad():
        torch.testing.assert_close(cpu(x.cpu(), adapter_ids=IDS), y.cpu(), rtol=1e-4, atol=1e-4)


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
    (_BatchNormHead, ["a", "b", None, "c", "b", "a"], False),
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
    torch.testing.assert_close(y.detach(), want, rtol=1e-12, atol=1e-12)
    want_g = {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
    assert grads.keys() == want_g.keys()
    for n in grads:
        torch.testing.assert_close(grads[n], want_g[n], rtol=1e-11, atol=1e-11, msg=n)


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
