"""Adapter files through vera_jax (spec 4): the checks of 4.6, exact round trips, and the same file
serving in PyTorch and in Flax NNX within the tolerance of spec 5.2."""
import numpy as np
import pytest

jax = pytest.importorskip("jax")
nnx = pytest.importorskip("flax.nnx")
optax = pytest.importorskip("optax")
import jax.numpy as jnp  # noqa: E402

import vera_jax  # noqa: E402
import vera_ref  # noqa: E402
from conftest import VECTORS  # noqa: E402
from vera_jax import files as jax_files  # noqa: E402
from vera_jax.nnx import VeraParam, apply_vera, load_adapter, save_adapter, to_adapter, vera_layers  # noqa: E402
from vera_ref.tolerance import compare, constant, forward_magnitude  # noqa: E402

IN, HID, OUT = 12, 20, 5


class FlaxMLP(nnx.Module):
    def __init__(self, rngs):
        self.fc1, self.fc2 = nnx.Linear(IN, HID, rngs=rngs), nnx.Linear(HID, OUT, rngs=rngs)

    def __call__(self, x):
        return self.fc2(jax.nn.relu(self.fc1(x)))


def weights(seed=0):
    rng = np.random.default_rng(seed)
    return {"fc1": (rng.normal(size=(HID, IN)) / 4, rng.normal(size=HID)),
            "fc2": (rng.normal(size=(OUT, HID)) / 4, rng.normal(size=OUT))}  # W0 (out, in), bias


def flax_model(w):
    m = FlaxMLP(nnx.Rngs(0))
    for n, (W, b) in w.items():
        getattr(m, n).kernel[...] = jnp.asarray(W.T, jnp.float32)  # nnx kernel (in, out) = W0^T
        getattr(m, n).bias[...] = jnp.asarray(b, jnp.float32)
    return m


def reference(w, ad, x):
    """The float64 reference of the whole model (spec 3.2 per layer) and its magnitude S (spec 5.2)."""
    h, s = np.asarray(x, np.float64), np.abs(np.asarray(x, np.float64))
    for i, n in enumerate(("fc1", "fc2")):
        W, b = (np.asarray(a, np.float32).astype(np.float64) for a in w[n])
        A, B = ad.projection(0)
        args = (W, b, A, B, ad.lambda_d[n].astype(np.float64), ad.lambda_b[n].astype(np.float64))
        h, s = vera_ref.forward(h, *args), forward_magnitude(s, *args)
        if i == 0:
            h, s = np.maximum(h, 0), s  # relu: |relu(a)| <= |a|, so S carries over
    return h, s


def model_constant(N, r):
    """spec 5.2.3 for the fc1 -> relu -> fc2 model: per layer e_l <= |W_l| e_(l-1) + C_l eps S_l (relu is
    1-Lipschitz), so the model's C is the sum of the two layers' derived forward C (any order or FMA)."""
    return (constant("forward", "float32", N=N, in_features=IN, out_features=HID, r=r)
            + constant("forward", "float32", N=N, in_features=HID, out_features=OUT, r=r))


def trained_adapter(path, seed=3, **kw):
    """A 'trained' JAX adapter saved at path: random vectors, as after training."""
    m = flax_model(weights())
    apply_vera(m, ["fc1", "fc2"], r=7, seed=seed, **kw)
    rng = np.random.default_rng(seed)
    for _, layer in vera_layers(m):
        layer.lambda_d[...] = jnp.asarray(rng.normal(size=layer.lambda_d[...].shape), jnp.float32)
        layer.lambda_b[...] = jnp.asarray(rng.normal(size=layer.lambda_b[...].shape), jnp.float32)
    save_adapter(m, path)
    return m


@pytest.mark.parametrize("kw", [{}, {"sharing": "per-module"}, {"vector_dtype": "bfloat16"}])
def test_jax_file_round_trip_is_exact_and_the_reference_reads_it(tmp_path, kw):
    p = tmp_path / "a.safetensors"
    m = trained_adapter(p, **kw)
    ref = vera_ref.validate_adapter(p)  # the reference's every check, checksums included
    assert ref.config.vector_dtype == kw.get("vector_dtype", "float32")
    assert [(s.name, s.in_features, s.out_features, s.layout) for s in ref.config.modules] == [
        ("fc1", IN, HID, "linear"), ("fc2", HID, OUT, "linear")]
    assert ref.config.base_model["fingerprint"] == vera_ref.base_fingerprint(
        {n: W for n, (W, _) in weights().items()}, ref.config.modules)  # (out, in) orientation: kernel^T
    back = flax_model(weights())
    load_adapter(back, p)
    for n, layer in vera_layers(back):
        assert np.array_equal(np.asarray(layer.lambda_d[...]), ref.lambda_d[n])
        assert np.array_equal(np.asarray(layer.lambda_b[...]), ref.lambda_b[n])
    again = tmp_path / "b.safetensors"
    save_adapter(back, again)
    assert p.read_bytes() == again.read_bytes()  # read and written back: the same bytes
    if not kw:
        x = jnp.asarray(np.random.default_rng(1).normal(size=(4, IN)), jnp.float32)
        assert np.array_equal(np.asarray(back(x)), np.asarray(m(x)))


def test_rule_26_runs_on_the_jax_generator(tmp_path, monkeypatch):
    p = tmp_path / "a.safetensors"
    trained_adapter(p)
    real = jax_files.projection

    def off_by_one_bit(*args):
        A, B = real(*args)
        return A.at[0, 0].set(jnp.nextafter(A[0, 0], jnp.inf)), B
    monkeypatch.setattr(jax_files, "projection", off_by_one_bit)
    with pytest.raises(vera_ref.AdapterFileError) as e:
        vera_jax.read_adapter(p)
    assert e.value.code == "E4.6.26.1" and e.value.field == "projection_sha256"
    assert str(e.value).startswith("projection_sha256: A of group 0 is ")


def test_invalid_file_vectors_are_refused_with_the_reference_code():
    import json
    env = json.loads((VECTORS / "files.json").read_text())
    for c in env["testGroups"][1]["tests"][::9]:  # a sample; the conformance run reads them all
        with pytest.raises(vera_ref.AdapterFileError) as e:
            vera_jax.read_adapter(VECTORS / "files" / c["file"])
        assert e.value.code == c["error"]["code"], c["file"]


def test_model_mismatches_are_one_line(tmp_path):
    p = tmp_path / "a.safetensors"
    trained_adapter(p)
    other = weights(seed=9)
    with pytest.raises(vera_ref.ModelMismatchError, match=r"base_model.fingerprint: this model's weights give "):
        load_adapter(flax_model(other), p)
    load_adapter(flax_model(other), p, check_fingerprint=False)

    class Wrong(nnx.Module):
        def __init__(self):
            self.fc1, self.fc2 = nnx.Linear(IN, HID + 1, rngs=nnx.Rngs(0)), nnx.Linear(HID, OUT, rngs=nnx.Rngs(0))
    with pytest.raises(vera_ref.ModelMismatchError,
                       match=r"modules: 'fc1' is \(in=12, out=21\) in this model but \(in=12, out=20\) in the adapter"):
        load_adapter(Wrong(), p)
    f64 = vera_ref.new_adapter([("fc1", IN, HID)], r=3, vector_dtype="float64")
    with pytest.raises(vera_ref.ModelMismatchError, match=r"vector_dtype: float64 vectors need jax_enable_x64"):
        load_adapter(flax_model(weights()), f64)
    load_adapter(flax_model(weights()), f64, vector_dtype="float32")


# -- the same file in PyTorch and in Flax ---------------------------------------------------------

def torch_model(w):
    torch = pytest.importorskip("torch")

    class TorchMLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = torch.nn.Linear(IN, HID), torch.nn.Linear(HID, OUT)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)))
    m = TorchMLP()
    with torch.no_grad():
        for n, (W, b) in w.items():
            getattr(m, n).weight.copy_(torch.tensor(W, dtype=torch.float32))
            getattr(m, n).bias.copy_(torch.tensor(b, dtype=torch.float32))
    return m


def test_torch_trained_file_serves_in_flax_and_flax_trained_file_serves_in_torch(tmp_path):
    torch = pytest.importorskip("torch")
    from vera_torch import VeraConfig, VeraModel, get_vera_model
    w = weights()
    x = np.random.default_rng(5).normal(size=(16, IN)).astype(np.float32)
    labels = np.random.default_rng(6).integers(0, OUT, 16)
    # torch trains
    tm = get_vera_model(torch_model(w), VeraConfig(r=7, target_modules=["fc1", "fc2"], seed=11))
    opt = torch.optim.SGD([p for p in tm.parameters() if p.requires_grad], lr=0.5)
    for _ in range(10):
        loss = torch.nn.functional.cross_entropy(tm(torch.from_numpy(x)), torch.from_numpy(labels))
        opt.zero_grad()
        loss.backward()
        opt.step()
    tm.save_adapter(tmp_path / "t.safetensors")
    fm = flax_model(w)
    load_adapter(fm, tmp_path / "t.safetensors")
    y_t = tm(torch.from_numpy(x)).detach().numpy()
    y_f = np.asarray(fm(jnp.asarray(x)))
    ad = vera_ref.load_adapter(tmp_path / "t.safetensors")
    assert np.abs(ad.lambda_b["fc1"]).max() > 1e-3  # it trained
    ref, S = reference(w, ad, x)
    c_model = model_constant(x.shape[0], 7)
    for y in (y_t, y_f):
        chk = compare(y, ref, S, "float32", c_model)
        assert chk.ok, chk.describe()
    # flax trains
    fm = flax_model(w)
    apply_vera(fm, ["fc1", "fc2"], r=7, seed=12)
    fopt = nnx.Optimizer(fm, optax.sgd(0.5), wrt=VeraParam)

    @nnx.jit
    def step(m, o, x, y):
        g = nnx.grad(lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean(),
                     argnums=nnx.DiffState(0, VeraParam))(m)
        o.update(m, g)
    for _ in range(10):
        step(fm, fopt, jnp.asarray(x), jnp.asarray(labels))
    save_adapter(fm, tmp_path / "f.safetensors")
    served = VeraModel.from_adapter(torch_model(w), tmp_path / "f.safetensors")  # fingerprint checked
    y_f2 = np.asarray(fm(jnp.asarray(x)))
    y_t2 = served(torch.from_numpy(x)).detach().numpy()
    ad2 = vera_ref.load_adapter(tmp_path / "f.safetensors")
    assert np.abs(ad2.lambda_b["fc1"]).max() > 1e-3
    ref2, S2 = reference(w, ad2, x)
    for y in (y_f2, y_t2):
        chk = compare(y, ref2, S2, "float32", c_model)
        assert chk.ok, chk.describe()
    print(f"\ntorch->flax max|diff| {np.abs(y_t - y_f).max():.3g} (worst {compare(y_f, ref, S, 'float32', c_model).ratio:.3g} "
          f"of the spec 5.2 bound); flax->torch max|diff| {np.abs(y_t2 - y_f2).max():.3g} "
          f"(worst {compare(y_t2, ref2, S2, 'float32', c_model).ratio:.3g} of the bound)")


def test_torch_task_head_loads_into_an_nnx_linear(tmp_path):
    torch = pytest.importorskip("torch")
    from vera_torch import VeraConfig, get_vera_model
    w = weights()
    tm = get_vera_model(torch_model(w), VeraConfig(r=4, target_modules=["fc1"], seed=0, modules_to_save=["fc2"]))
    with torch.no_grad():
        for p in tm.parameters():
            if p.requires_grad:
                p.add_(0.25)
    tm.save_adapter(tmp_path / "h.safetensors")
    fm = flax_model(w)
    load_adapter(fm, tmp_path / "h.safetensors")
    x = np.random.default_rng(2).normal(size=(3, IN)).astype(np.float32)
    gap = np.abs(np.asarray(fm(jnp.asarray(x)), np.float64) - tm(torch.from_numpy(x)).detach().double().numpy())
    # each float32 side within C eps S of the exact model (spec 5.2.3, C summed over fc1 and the saved fc2;
    # S: fc1's forward magnitude, then |W2| S + |b2|), so the two differ by at most twice that on any machine
    l1 = tm.base_model.fc1
    A, B = (t.detach().double().numpy() for t in l1.sliced_projection("default", "cpu"))
    W1, b1 = (np.asarray(a, np.float32).astype(np.float64) for a in w["fc1"])
    ld, lb = (t["default"].detach().double().numpy() for t in (l1.vera_lambda_d, l1.vera_lambda_b))
    fc2 = tm.base_model.fc2.copies["default"]  # the saved head (modules_to_save)
    W2, b2 = (t.detach().double().abs().numpy() for t in (fc2.weight, fc2.bias))
    S = forward_magnitude(np.abs(x.astype(np.float64)), W1, b1, A, B, ld, lb) @ W2.T + b2
    assert (gap <= 2 * model_constant(x.shape[0], 4) * 2.0**-23 * S).all()
    ad = to_adapter(fm, modules_to_save=["fc2"])
    ref = vera_ref.load_adapter(tmp_path / "h.safetensors")
    for k in ("fc2.weight", "fc2.bias"):
        assert np.array_equal(ad.extra[k][0], ref.extra[k][0])


def test_stored_and_peft_generators_load_and_write_back(tmp_path):
    # valid-04: stored projections (spec 2.5.2) and float64 vectors, held rounded to float32 on request
    ref = vera_ref.load_adapter(VECTORS / "files" / "valid-04.safetensors")
    (name, fi, fo) = (ref.config.modules[0].name, ref.config.modules[0].in_features, ref.config.modules[0].out_features)

    class One(nnx.Module):
        def __init__(self):
            setattr(self, name, nnx.Linear(fi, fo, rngs=nnx.Rngs(0)))
    m = One()
    load_adapter(m, VECTORS / "files" / "valid-04.safetensors", vector_dtype="float32")
    (_, layer), = vera_layers(m)
    assert np.array_equal(np.asarray(layer.A[...]), ref.stored[0][0])
    assert np.array_equal(np.asarray(layer.lambda_d[...]), ref.lambda_d[name].astype(np.float32))
    save_adapter(m, tmp_path / "s.safetensors", fingerprint=False)
    back = vera_ref.validate_adapter(tmp_path / "s.safetensors")
    assert back.config.generator == "stored" and np.array_equal(back.stored[0][1], ref.stored[0][1])
    assert np.array_equal(back.lambda_b[name], ref.lambda_b[name].astype(np.float32))  # float64 of the rounded values
    with pytest.raises(vera_ref.ProjectionError, match="the stored generator has no rule to generate from"):
        apply_vera(flax_model(weights()), ["fc1"], r=4, generator="stored")
    # PEFT's MT19937 projections (spec 2.5.3) come from the reference
    m = flax_model(weights())
    apply_vera(m, ["fc1", "fc2"], r=4, seed=7, generator="peft-mt19937")
    A, B = vera_ref.peft_projection(7, 4, HID, HID)
    assert np.array_equal(np.asarray(dict(vera_layers(m))["fc2"].A[...]), A)
