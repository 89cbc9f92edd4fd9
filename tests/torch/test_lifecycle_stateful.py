"""The adapter lifecycle of VeraModel as a state machine (issue 15 item 3).

Hypothesis drives random sequences of add / set / delete / train (vectors changed in place) /
merge (repeated) / unmerge / disable (nested, repeated) / mixed batches / file round trips over a
two-layer model, with philox (shared and per-module), stored and peft-mt19937 projections, and
checks after every step against an independent model: the NumPy reference (vera_ref.projection,
peft_projection, delta_weight, in float64) applied to the original weights, and the spec 4.3
fingerprint computed here with hashlib. The invariants:

- the output is x (W0 + sum of merged Delta W)^T + b, plus the active adapter's term when it is
  not merged and adapters are not disabled (spec 3.2, 3.5);
- inside ``disable_adapter()`` (at any nesting depth) the weights are W0 bit for bit and the
  output is the base model's; after the block the weights are what they were before it;
- after ``unmerge()`` the weights are W0 bit for bit; merging a merged adapter again changes nothing;
- a mixed batch gives every row its own adapter's output (None: the base model); a model with a
  merged adapter refuses mixed batches with MergeError and is unchanged;
- refusals (delete a merged adapter, switch away from a merged one, unknown names) change nothing;
- the fingerprint is of W0 whatever is merged; a saved adapter loads into a fresh copy of the base
  model and gives the reference output there, stored projections included.
"""
import hashlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from hypothesis import HealthCheck, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule  # noqa: E402

import vera_ref  # noqa: E402
from vera_torch import VeraConfig, VeraModel  # noqa: E402
from vera_torch.errors import AdapterNameError, MergeError  # noqa: E402
from torch_models import QV  # noqa: E402

NAMES = ("a", "b", "c", "d")
LAYERS = (("q", 8, 6), ("v", 6, 5))  # (path, in, out), applied in this order: y = v(tanh(q(x)))
N_IN, N_OUT = 8, 6  # spec 2.2: the largest dimensions
GENERATORS = (("philox4x32-10", "shared"), ("philox4x32-10", "per-module"), ("stored", "shared"),
              ("stored", "per-module"), ("peft-mt19937", "shared"))


def fresh_base(dtype: torch.dtype) -> QV:
    torch.manual_seed(1234)
    return QV().to(dtype)


def ref_projections(cfg: VeraConfig, targets: tuple[str, ...]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The full pair each targeted layer reads, from the NumPy reference (spec 2.1, 2.2, 2.4, 2.5)."""
    dims = [(p, fi, fo) for p, fi, fo in LAYERS if p in targets]
    n_in, n_out = max(d[1] for d in dims), max(d[2] for d in dims)  # spec 2.2: the largest dimensions
    out = {}
    for i, (path, fi, fo) in enumerate(dims):
        if cfg.generator == "peft-mt19937":
            out[path] = vera_ref.peft_projection(cfg.seed, cfg.r, n_in, n_out)
        elif cfg.sharing == "shared":  # philox, and stored (drawn once from the seed with philox)
            out[path] = vera_ref.projection(cfg.seed, cfg.r, n_in, n_out, 0)
        else:
            out[path] = vera_ref.projection(cfg.seed, cfg.r, fi, fo, i + 1)
    return out


def fingerprint(W0: dict[str, np.ndarray], paths) -> str:
    """spec 4.3, written out: sha256 over each module in file order: its name, NUL, W0 as <f4 (out, in)."""
    h = hashlib.sha256()
    for path in paths:
        h.update(path.encode() + b"\0" + np.ascontiguousarray(W0[path], dtype="<f4").tobytes())
    return h.hexdigest()


class Lifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dtype = torch.float32
        self.model: VeraModel | None = None

    # -- the independent model -------------------------------------------------------------------
    def start(self, dtype: torch.dtype) -> None:
        self.dtype = dtype
        self.model = VeraModel(fresh_base(dtype))
        self.W0 = {p: getattr(self.model.base_model, p).weight.detach().clone() for p, _, _ in LAYERS}
        self.W0np = {p: w.double().numpy() for p, w in self.W0.items()}
        self.bias = {p: getattr(self.model.base_model, p).bias.detach().double().numpy() for p, _, _ in LAYERS}
        self.cfgs: dict[str, VeraConfig] = {}
        self.targets: dict[str, tuple[str, ...]] = {}
        self.proj: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
        self.vec: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}  # name -> path -> (ld, lb) float64
        self.merged: list[str] = []
        self.active: str | None = None
        self.x = torch.linspace(-2, 2, 3 * 8, dtype=torch.float64).reshape(3, 8)

    def layer(self, path: str):
        return getattr(self.model.base_model, path)

    def weights(self) -> dict[str, torch.Tensor]:
        return {p: self.layer(p).weight.detach().clone() for p, _, _ in LAYERS}

    def delta(self, name: str, path: str, fi: int, fo: int) -> np.ndarray:
        if path not in self.targets[name]:
            return np.zeros((fo, fi))
        A, B = self.proj[name][path]
        ld, lb = self.vec[name][path]
        return vera_ref.delta_weight(A, B, ld, lb, fi, fo)  # (out, in), float64

    def expected(self, x: np.ndarray, adapter: str | None, merged: list[str], disabled: bool = False) -> np.ndarray:
        h = x
        for i, (path, fi, fo) in enumerate(LAYERS):
            W = self.W0np[path] + sum((self.delta(n, path, fi, fo) for n in merged), np.zeros((fo, fi)))
            y = h @ W.T + self.bias[path]
            if adapter is not None and adapter not in merged and not disabled and path in self.targets[adapter]:
                A, B = self.proj[adapter][path]
                ld, lb = self.vec[adapter][path]
                y = vera_ref.forward(h, W, self.bias[path], A, B, ld, lb)
            h = np.tanh(y) if i == 0 else y
        return h

    def tol(self, want: np.ndarray) -> float:
        scale = 1.0 + float(np.max(np.abs(want)))
        return scale * (1e-5 if self.dtype == torch.float32 else 3e-2)

    def check_output(self, got: torch.Tensor, want: np.ndarray, what: str) -> None:
        err = float(np.max(np.abs(got.detach().double().numpy() - want)))
        assert err <= self.tol(want), f"{what}: max |torch - reference| = {err:.3g}"

    def run(self, ids=None) -> torch.Tensor:
        with torch.no_grad():
            x = self.x.to(self.dtype)
            return self.model(x) if ids is None else self.model(x, adapter_ids=ids)

    def assert_w0(self, what: str) -> None:
        for p, w in self.weights().items():
            assert torch.equal(w, self.W0[p]), f"{what}: weight of {p} is not W0 bit for bit"

    def assert_weights(self, before: dict[str, torch.Tensor], what: str) -> None:
        for p, w in self.weights().items():
            assert torch.equal(w, before[p]), f"{what}: weight of {p} changed"

    # -- rules ---------------------------------------------------------------------------------------
    @initialize(dtype=st.sampled_from([torch.float32, torch.float32, torch.bfloat16]))
    def init(self, dtype):
        self.start(dtype)

    @precondition(lambda self: self.model is not None)
    @rule(name=st.sampled_from(NAMES), r=st.sampled_from([1, 3, 4]),
          seed=st.sampled_from([0, 7, 2**32 + 5, 2**64 - 1]), gen=st.sampled_from(GENERATORS),
          vector_dtype=st.sampled_from(["float32", "float32", "float64"]),
          mods=st.sampled_from([("q", "v"), ("q", "v"), ("q",), ("v",)]))
    def add(self, name, r, seed, gen, vector_dtype, mods=("q", "v")):
        if gen[0] == "peft-mt19937":
            seed = seed % 2**32 if seed != 2**64 - 1 else 3  # keep MT19937 inputs small and fast
        cfg = VeraConfig(r=r, target_modules=list(mods), seed=seed, generator=gen[0], sharing=gen[1],
                         d_initial=0.5, vector_dtype=vector_dtype)
        before = self.weights()
        if name in self.cfgs:
            with pytest.raises(AdapterNameError):
                self.model.add_adapter(name, cfg)
            self.assert_weights(before, "refused add")
            return
        self.model.add_adapter(name, cfg)
        self.cfgs[name] = cfg
        self.targets[name] = mods
        self.proj[name] = ref_projections(cfg, mods)
        # spec 3.9: lambda_d = d_initial, lambda_b = 0
        self.vec[name] = {p: (np.full(r, 0.5), np.zeros(fo)) for p, _, fo in LAYERS if p in mods}
        self.assert_weights(before, "add")

    @precondition(lambda self: self.model is not None and self.cfgs)
    @rule(data=st.data(), seed=st.integers(0, 2**16))
    def train(self, data, seed):
        """Change an unmerged adapter's vectors in place (what an optimiser step does)."""
        free = [n for n in self.cfgs if n not in self.merged]
        if not free:
            return
        name = data.draw(st.sampled_from(free))
        rng = np.random.default_rng(seed)
        for path in self.targets[name]:
            fo = dict((p, o) for p, _, o in LAYERS)[path]
            layer = self.layer(path)
            pd, pb = layer.vera_lambda_d[name], layer.vera_lambda_b[name]
            ld = rng.uniform(-1, 1, pd.shape[0])
            lb = rng.uniform(-1, 1, fo)
            with torch.no_grad():
                pd.copy_(torch.from_numpy(ld))
                pb.copy_(torch.from_numpy(lb))
            # the vectors as held (rounded to vector_dtype) are what the reference uses
            self.vec[name][path] = (pd.detach().double().numpy().copy(), pb.detach().double().numpy().copy())

    @precondition(lambda self: self.model is not None)
    @rule(name=st.sampled_from(NAMES))
    def set_adapter(self, name):
        before = self.weights()
        if name not in self.cfgs:
            with pytest.raises(AdapterNameError):
                self.model.set_adapter(name)
        elif self.merged and self.merged != [name]:
            with pytest.raises(MergeError):
                self.model.set_adapter(name)
        else:
            self.model.set_adapter(name)
            self.active = name
            for path, _, _ in LAYERS:  # only the active adapter's vectors are trainable
                for n in self.cfgs:
                    if path in self.targets[n]:
                        assert self.layer(path).vera_lambda_b[n].requires_grad == (n == name)
        self.assert_weights(before, "set_adapter")

    @precondition(lambda self: self.model is not None)
    @rule(name=st.sampled_from(NAMES))
    def delete(self, name):
        before = self.weights()
        if name not in self.cfgs:
            with pytest.raises(AdapterNameError):
                self.model.delete_adapter(name)
        elif name in self.merged:
            with pytest.raises(MergeError):
                self.model.delete_adapter(name)
        else:
            self.model.delete_adapter(name)
            for d in (self.cfgs, self.proj, self.vec, self.targets):
                del d[name]
            if self.active == name:
                self.active = None
        self.assert_weights(before, "delete")

    @precondition(lambda self: self.model is not None and self.cfgs)
    @rule(data=st.data(), default=st.booleans())
    def merge(self, data, default):
        name = data.draw(st.sampled_from(sorted(self.cfgs)))
        before = self.weights()
        if default and self.active is not None:
            name = self.active
            self.model.merge()
        else:
            self.model.merge(name)
        if name in self.merged:  # merging twice must not add Delta W twice
            self.assert_weights(before, f"second merge of {name!r}")
        else:
            self.merged.append(name)
        for path, fi, fo in LAYERS:
            want = self.W0np[path] + sum(self.delta(n, path, fi, fo) for n in self.merged)
            got = self.layer(path).weight.detach().double().numpy()
            assert np.max(np.abs(got - want)) <= self.tol(want), f"merged weight of {path}"

    @precondition(lambda self: self.model is not None)
    @rule()
    def unmerge(self):
        self.model.unmerge()
        self.merged = []
        self.assert_w0("after unmerge()")

    @precondition(lambda self: self.model is not None)
    @rule(depth=st.integers(1, 3), repeat=st.integers(1, 2))
    def disabled(self, depth, repeat):
        before = self.weights()
        x = self.x.numpy()

        def enter(level):
            with self.model.disable_adapter():
                self.assert_w0(f"inside disable_adapter() (depth {level})")
                self.check_output(self.run(), self.expected(x, None, []), f"disabled (depth {level})")
                if level < depth:
                    enter(level + 1)
                    self.assert_w0(f"back at depth {level}")

        for _ in range(repeat):
            enter(1)
            self.assert_weights(before, "after leaving disable_adapter()")

    @precondition(lambda self: self.model is not None)
    @rule(data=st.data())
    def mixed(self, data):
        ids = data.draw(st.lists(st.sampled_from(sorted(self.cfgs) + [None]), min_size=3, max_size=3))
        before = self.weights()
        if self.merged:
            with pytest.raises(MergeError):
                self.run(ids)
            self.assert_weights(before, "refused mixed batch")
            return
        got = self.run(ids)
        x = self.x.numpy()
        for i, n in enumerate(ids):
            self.check_output(got[i:i + 1], self.expected(x[i:i + 1], n, []), f"mixed batch row {i} ({n!r})")

    @precondition(lambda self: self.model is not None)
    @rule(path=st.sampled_from(["fused", "fused_x", "fused_h", "factored", "auto"]))
    def choose_path(self, path):
        for p, _, _ in LAYERS:
            self.layer(p).fused = {"fused": True, "fused_x": "x", "fused_h": "h", "factored": False, "auto": None}[path]

    @precondition(lambda self: self.model is not None and self.active is not None)
    @rule()
    def round_trip(self):
        """to_adapter -> a fresh copy of the base model: same fingerprint, projections and output."""
        name = self.active
        ad = self.model.to_adapter(name)
        assert ad.config.base_model["fingerprint"] == fingerprint(self.W0np, self.targets[name])
        if self.cfgs[name].generator == "stored":
            for g, (A, B) in ad.stored.items():
                path = self.targets[name][max(g - 1, 0)]
                np.testing.assert_array_equal(A, self.proj[name][path][0])
                np.testing.assert_array_equal(B, self.proj[name][path][1])
        other = VeraModel.from_adapter(fresh_base(self.dtype), ad, name)
        with torch.no_grad():
            got = other(self.x.to(self.dtype))
        self.check_output(got, self.expected(self.x.numpy(), name, []), f"{name!r} loaded in a fresh model")

    # -- invariants ------------------------------------------------------------------------------
    @invariant()
    def output_is_the_reference(self):
        if self.model is None:
            return
        assert self.model.active_adapter == self.active
        assert sorted(self.model.adapters) == sorted(self.cfgs)
        want = self.expected(self.x.numpy(), self.active if self.active in self.cfgs else None, self.merged)
        self.check_output(self.run(), want, f"active {self.active!r}, merged {self.merged}")

    @invariant()
    def fingerprint_is_of_w0(self):
        if self.model is None:
            return
        for n in self.cfgs:
            assert self.model.base_fingerprint(n) == fingerprint(self.W0np, self.targets[n]), f"fingerprint of {n!r}"


Lifecycle.TestCase.settings = settings(max_examples=50, stateful_step_count=20, deadline=None,
                                       suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
test_adapter_lifecycle = Lifecycle.TestCase


def test_the_machine_sees_a_double_merge(monkeypatch):
    """The check "merging twice does not add Delta W twice" can fail: a merge that adds Delta W
    again on a merged layer (the idempotency guard removed) is caught."""
    m = Lifecycle()
    m.start(torch.float32)
    m.add("a", 3, 7, GENERATORS[0], "float32")
    m.train(_Data("a"), 1)
    m.merge(_Data("a"), False)
    merge = m.model.merge

    def merge_without_guard(name=None):
        merge(name)
        with torch.no_grad():
            for path, _, _ in LAYERS:
                m.layer(path).weight.add_(m.layer(path).delta_weight(name))

    monkeypatch.setattr(m.model, "merge", merge_without_guard)
    with pytest.raises(AssertionError, match="second merge of 'a'"):
        m.merge(_Data("a"), False)


class _Data:
    """Stands in for hypothesis' data object in the hand-written runs above."""

    def __init__(self, value):
        self.value = value

    def draw(self, strategy):
        return self.value
