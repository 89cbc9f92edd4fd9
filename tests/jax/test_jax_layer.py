"""vera_jax layer math (spec 3) against the float64 reference under spec 5.2, and the Flax NNX wrapper."""
import numpy as np
import pytest

jax = pytest.importorskip("jax")
nnx = pytest.importorskip("flax.nnx")
optax = pytest.importorskip("optax")
import jax.numpy as jnp  # noqa: E402

import vera_jax  # noqa: E402
import vera_ref  # noqa: E402
from vera_jax.nnx import (VeraLinear, VeraParam, VeraProjection, apply_vera, merge_and_unload, unload,  # noqa: E402
                          vera_layers)
from vera_ref.dtypes import round_to  # noqa: E402
from vera_ref.tolerance import backward_magnitude, compare, constant, forward_magnitude, merge_magnitude  # noqa: E402

CASES = [  # (layout, N, in, out, r, n_in, n_out, group, bias, dropout)
    ("linear", 5, 12, 7, 6, 12, 7, 0, True, 0.0),
    ("conv1d", 3, 9, 13, 5, 20, 16, 3, False, 0.25),
    ("linear", 4, 16, 16, 1, 17, 21, 1, True, 0.5),
]


def case(layout, N, in_f, out_f, r, n_in, n_out, group, bias, p, dtype="float32", seed=42):
    rng = np.random.default_rng(seed + N + in_f)

    def vals(*shape, s=1.0):
        return round_to(rng.normal(size=shape) * s, dtype).astype(np.float64)
    W = vals(out_f, in_f) if layout == "linear" else vals(in_f, out_f)
    A, B = vera_ref.projection(seed, r, n_in, n_out, group)
    mask = (rng.random((N, in_f)) >= p).astype(np.float64) if p else None
    return dict(x=vals(N, in_f), W=W, bias=vals(out_f) if bias else None, A=A, B=B, ld=vals(r), lb=vals(out_f),
                dy=vals(N, out_f), mask=mask, p=p, layout=layout, args=(seed, r, n_in, n_out, group))


def jx(a, dtype="float32"):
    return None if a is None else jnp.asarray(a, {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("spec", CASES)
def test_forward_grads_merge_unmerge_within_spec_tolerance(spec, dtype):
    c = case(*spec, dtype=dtype)
    A, B = vera_jax.projection(*c["args"])  # our own projections (bit-identical: test_jax_projection)
    A, B = A.astype(jx(0.0, dtype).dtype), B.astype(jx(0.0, dtype).dtype)
    kw = dict(layout=c["layout"], dropout_mask=c["mask"], dropout=c["p"])
    ref_args = (c["x"], c["W"], c["bias"], c["A"], c["B"], c["ld"], c["lb"])

    @jax.jit
    def run(x, W, bias, ld, lb, dy, mask):
        def f(x, ld, lb):
            return vera_jax.forward(x, W, bias, A, B, ld, lb, layout=c["layout"], dropout_mask=mask, dropout=c["p"])
        y, vjp = jax.vjp(f, x, ld, lb)  # gradients by jax's own differentiation
        return y, vjp(dy)

    y, (dx, dld, dlb) = run(jx(c["x"], dtype), jx(c["W"], dtype), jx(c["bias"], dtype), jx(c["ld"], dtype),
                            jx(c["lb"], dtype), jx(c["dy"], dtype), jx(c["mask"], dtype))
    # spec 5.2.3: C derived for this case's sizes, so the bound holds for any summation order / FMA use
    _, N, in_f, out_f, r = spec[:5]
    sizes = dict(N=N, in_features=in_f, out_features=out_f, r=r)
    ref = vera_ref.forward(*ref_args, **kw)
    chk = compare(np.asarray(y, np.float64), ref, forward_magnitude(*ref_args, **kw), dtype,
                  constant("forward", dtype, **sizes))
    assert chk.ok, chk.describe()
    g_ref = vera_ref.backward(c["x"], c["W"], c["A"], c["B"], c["ld"], c["lb"], c["dy"], **kw)  # spec 3.4
    g_mag = backward_magnitude(c["x"], c["W"], c["A"], c["B"], c["ld"], c["lb"], c["dy"], **kw)
    for got, want, mag, q in zip((dx, dld, dlb), g_ref, g_mag, ("dx", "d_lambda_d", "d_lambda_b")):
        chk = compare(np.asarray(got, np.float64), want, mag, dtype, constant(q, dtype, **sizes))
        assert chk.ok, (q, chk.describe())
    mk = dict(layout=c["layout"])
    merged = vera_jax.merge(jx(c["W"], dtype), A, B, jx(c["ld"], dtype), jx(c["lb"], dtype), **mk)
    S = merge_magnitude(c["W"], c["A"], c["B"], c["ld"], c["lb"], **mk)
    chk = compare(np.asarray(merged, np.float64), vera_ref.merge(c["W"], c["A"], c["B"], c["ld"], c["lb"], **mk),
                  S, dtype, constant("merge", dtype, **sizes))
    assert chk.ok, chk.describe()
    Wm = np.asarray(merged, np.float64)
    back = vera_jax.unmerge(merged, A, B, jx(c["ld"], dtype), jx(c["lb"], dtype), **mk)
    chk = compare(np.asarray(back, np.float64), vera_ref.unmerge(Wm, c["A"], c["B"], c["ld"], c["lb"], **mk),
                  merge_magnitude(Wm, c["A"], c["B"], c["ld"], c["lb"], **mk), dtype,
                  constant("merge", dtype, **sizes))  # spec 5.2.3: unmerge of the got Wm counts as one merge
    assert chk.ok, chk.describe()


def test_a_wrong_slice_would_fail_the_tolerance():
    # the check above can fail: A's trailing columns instead of its leading slice (spec 2.3) is an O(S) error
    c = case(*CASES[1])
    kw = dict(layout=c["layout"])
    A_bad = np.roll(c["A"], -3, axis=1)
    y = vera_jax.forward(jx(c["x"]), jx(c["W"]), None, jx(A_bad), jx(c["B"]), jx(c["ld"]), jx(c["lb"]), **kw)
    ref_args = (c["x"], c["W"], None, c["A"], c["B"], c["ld"], c["lb"])
    _, N, in_f, out_f, r = CASES[1][:5]
    assert not compare(np.asarray(y, np.float64), vera_ref.forward(*ref_args, **kw),
                       forward_magnitude(*ref_args, **kw), "float32",
                       constant("forward", "float32", N=N, in_features=in_f, out_features=out_f, r=r)).ok


def test_shape_errors_are_one_line():
    A, B = vera_jax.projection(0, 4, 8, 6)
    with pytest.raises(vera_ref.ShapeError, match=r"layer \(in=9, out=6\) is larger than the projection \(n_in=8, n_out=6\)"):
        vera_jax.forward(jnp.ones((2, 9)), jnp.ones((6, 9)), None, A, B, jnp.ones(4), jnp.ones(6))
    with pytest.raises(vera_ref.ShapeError, match=r"lambda_d must have shape \(4,\), got \(3,\)"):
        vera_jax.merge(jnp.ones((6, 8)), A, B, jnp.ones(3), jnp.ones(6))
    with pytest.raises(vera_ref.ShapeError, match="layout must be 'linear' or 'conv1d', got 'dense'"):
        vera_jax.merge(jnp.ones((6, 8)), A, B, jnp.ones(4), jnp.ones(6), layout="dense")


class MLP(nnx.Module):
    def __init__(self, rngs):
        self.fc1 = nnx.Linear(8, 16, rngs=rngs)
        self.blocks = nnx.List([nnx.Linear(16, 16, rngs=rngs), nnx.Linear(16, 16, rngs=rngs)])
        self.head = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x):
        h = jax.nn.relu(self.fc1(x))
        for b in self.blocks:
            h = jax.nn.relu(b(h))
        return self.head(h)


def test_nnx_adapts_named_linears_trains_only_the_vectors_and_merges_back():
    model = MLP(nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (6, 8))
    y0 = model(x)
    kernels = {n: np.asarray(m.kernel[...]) for n, m in [("fc1", model.fc1), ("head", model.head)]}
    names = apply_vera(model, ["fc1", "blocks.0", "blocks.1"], r=8, seed=5)
    assert names == ["blocks.0", "blocks.1", "fc1"]  # graph order: NNX sorts attribute names
    assert isinstance(model.blocks[0], VeraLinear) and isinstance(model.head, nnx.Linear)
    assert np.array_equal(np.asarray(model(x)), np.asarray(y0))  # spec 3.9: an exact no-op at init
    layers = dict(vera_layers(model))
    assert layers["fc1"].A is layers["blocks.1"].A  # one shared pair (spec 2.4), not a copy per layer
    a, _ = vera_ref.projection(5, 8, 16, 16)
    assert np.array_equal(np.asarray(layers["fc1"].A[...]), a)
    # only lambda_d and lambda_b are VeraParam; A and B are not Params at all
    trainable = nnx.to_flat_state(nnx.state(model, VeraParam))
    assert sorted(".".join(map(str, k)) for k, _ in trainable) == sorted(
        f"{n}.{v}" for n in names for v in ("lambda_d", "lambda_b"))
    assert not any(isinstance(v, nnx.Param) for _, v in nnx.to_flat_state(nnx.state(model, VeraProjection)))
    opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=VeraParam)
    target = jnp.ones((6, 3))

    @nnx.jit
    def step(model, opt):
        loss, g = nnx.value_and_grad(lambda m: ((m(x) - target) ** 2).mean(), argnums=nnx.DiffState(0, VeraParam))(model)
        opt.update(model, g)
        return loss

    losses = [float(step(model, opt)) for _ in range(15)]
    assert losses[-1] < losses[0]
    assert np.array_equal(np.asarray(model.head.kernel[...]), kernels["head"])  # frozen
    assert np.array_equal(np.asarray(model.fc1.base.kernel[...]), kernels["fc1"])
    assert np.array_equal(np.asarray(model.fc1.A[...]), a)
    y = np.asarray(model(x))
    allowed = _mlp_merge_gap_bound(model, np.asarray(x, np.float64))
    merge_and_unload(model)
    assert type(model.fc1) is nnx.Linear and type(model.blocks[1]) is nnx.Linear
    # each side within its spec 5.2.3 bound of the exact value (derived C, any order or FMA): see the helper
    assert (np.abs(np.asarray(model(x), np.float64) - y) <= allowed).all()
    assert not vera_layers(model)


def test_unload_restores_the_base_and_dropout_needs_rngs():
    model = MLP(nnx.Rngs(0))
    x = jnp.ones((2, 8))
    y0 = np.asarray(model(x))
    apply_vera(model, ["head"], r=4, dropout=0.5, rngs=nnx.Rngs(dropout=1))
    model.head.lambda_b[...] = jnp.ones(3)
    model.train()
    a, b = np.asarray(model(x)), np.asarray(model(x))
    assert not np.array_equal(a, b)  # random dropout masks on the adapter input in train mode
    model.eval()
    assert np.array_equal(np.asarray(model(x)), np.asarray(model(x)))
    unload(model)
    assert type(model.head) is nnx.Linear and np.array_equal(np.asarray(model(x)), y0)
    with pytest.raises(vera_ref.ModelMismatchError, match=r"dropout: p=0.1 needs rngs="):
        apply_vera(MLP(nnx.Rngs(0)), ["head"], r=4, dropout=0.1)
    with pytest.raises(vera_ref.ModelMismatchError, match=r"modules: no nnx.Linear of this model matches \['nope'\]"):
        apply_vera(MLP(nnx.Rngs(0)), ["nope"], r=4)
    with pytest.raises(vera_ref.ModelMismatchError, match=r"modules: no nnx.Linear of this model matches '.\*base'"):
        apply_vera(model_with_head_adapted(), ".*base", r=4)  # the wrapped nnx.Linear is not a target


def model_with_head_adapted():
    m = MLP(nnx.Rngs(0))
    apply_vera(m, ["head"], r=4)
    return m


def _mlp_merge_gap_bound(model, x):
    """Per element, how far the float32 MLP with VeRA layers and its merged copy may be apart on any
    machine. Per layer l, error e_l <= |W_l| e_(l-1) + C_l eps S_l (relu is 1-Lipschitz and |relu(z)| <= |z|),
    with S_l the layer's forward magnitude on S_(l-1) (the exact |h| <= S), so e <= (sum of C_l) eps S_out.
    C_l: spec 5.2.3 forward for the VeRA side; forward + merge (W' rounded, |W'| <= merge magnitude) for the
    merged side; the plain head takes the forward C (r = 1) on both. Second-order terms: a factor 1.01."""
    eps, S, k = 2.0**-23, np.abs(x), 0.0
    for layer in (model.fc1, model.blocks[0], model.blocks[1], model.head):
        if isinstance(layer, VeraLinear):
            base = layer.base
            A, B = np.asarray(layer.A[...], np.float64), np.asarray(layer.B[...], np.float64)
            ld, lb = np.asarray(layer.lambda_d[...], np.float64), np.asarray(layer.lambda_b[...], np.float64)
            r = ld.shape[0]
        else:
            base, A, B, ld, lb, r = layer, None, None, None, None, 1
        W = np.asarray(base.kernel[...], np.float64)  # (in, out)
        b = np.asarray(base.bias[...], np.float64)
        sizes = dict(N=x.shape[0], in_features=W.shape[0], out_features=W.shape[1], r=r)
        c_f = constant("forward", "float32", **sizes)
        if A is None:
            S, k = S @ np.abs(W) + np.abs(b), k + 2 * c_f
        else:
            S = forward_magnitude(S, W, b, A, B, ld, lb, layout="conv1d")
            k += 2 * c_f + constant("merge", "float32", **sizes)
    return 1.01 * k * eps * S
