"""Training memory at the floor in JAX (issue 25): with ``remat=True`` (the default) backward keeps nothing
the adapter branch computes, only its inputs (x, which the frozen base layer keeps anyway, the vectors, the
projections, the mask or key); x A^T, h and the lambda-scaled intermediates are recomputed. Residuals are
read from JAX's own saved-residual inspection (deterministic: no timing). Gradients equal the plain
path's bit for bit in float64; spec tolerance in float32/bfloat16 is test_jax_layer's (default path)."""
import numpy as np
import pytest

jax = pytest.importorskip("jax")
nnx = pytest.importorskip("flax.nnx")
import jax.numpy as jnp  # noqa: E402
from jax._src.ad_checkpoint import saved_residuals  # noqa: E402  (the data print_saved_residuals prints)

import vera_jax  # noqa: E402
from vera_jax.nnx import VeraLinear, VeraParam, apply_vera  # noqa: E402

INPUT = ("from the argument", "from a constant")


def computed(f, *args) -> list[tuple[tuple[int, ...], str]]:
    """(shape, dtype) of every residual backward keeps that is not an input of ``f`` (its arguments and the
    arrays it closes over), sorted."""
    return sorted((tuple(a.shape), str(a.dtype)) for a, why in saved_residuals(f, *args) if not why.startswith(INPUT))


def inputs(f, *args) -> list[str]:
    return sorted(why for _, why in saved_residuals(f, *args) if why.startswith("from the argument"))


CASES = [("linear", None, jnp.float32), ("conv1d", None, jnp.float32), ("linear", "mask", jnp.float32),
         ("linear", "key", jnp.float32), ("conv1d", "key", jnp.bfloat16)]


@pytest.mark.parametrize("layout,drop,dtype", CASES)
def test_the_adapter_branch_keeps_only_its_inputs(layout, drop, dtype):
    N, T, in_f, out_f, r = 2, 5, 12, 7, 16
    x = jax.random.normal(jax.random.key(0), (N, T, in_f), dtype)
    W = jax.random.normal(jax.random.key(1), (out_f, in_f) if layout == "linear" else (in_f, out_f), dtype)
    bias = jnp.ones((out_f,), dtype)
    A, B = vera_jax.projection(0, r, 20, 9)
    kw = dict(layout=layout, dropout=0.25 if drop else 0.0)
    if drop == "mask":
        kw["dropout_mask"] = (jax.random.uniform(jax.random.key(2), x.shape) > 0.25).astype(dtype)
    elif drop == "key":
        kw["dropout_key"] = jax.random.key(3)

    def base(x):  # the frozen layer alone: the floor
        return jnp.sum(vera_jax.forward(x, W, bias, A, B, jnp.zeros(r), jnp.zeros(out_f), **kw)
                       - vera_jax.adapter_out(x, A, B, jnp.zeros(r), jnp.zeros(out_f), **kw))

    def plain_base(x):
        return jnp.sum((x @ (W.T if layout == "linear" else W)) + bias)

    def adapted(x, ld, lb, remat=True):
        return jnp.sum(vera_jax.forward(x, W, bias, A, B, ld, lb, remat=remat, **kw).astype(jnp.float32))

    ld, lb = jnp.full((r,), 0.5), jnp.linspace(-1, 1, out_f)
    floor = computed(plain_base, x)
    assert computed(adapted, x, ld, lb) == floor  # nothing of the branch's own
    assert inputs(adapted, x, ld, lb) == ["from the argument lb", "from the argument ld", "from the argument x"]
    fat = computed(lambda x, ld, lb: adapted(x, ld, lb, remat=False), x, ld, lb)
    assert len(fat) > len(floor)  # the check can fail: the plain path keeps h, x A^T, ... (the test sees them)
    assert (N, T, r) in [s for s, _ in fat]


def test_gradients_equal_the_plain_path_bit_for_bit_in_float64():
    A, B = (np.asarray(m, np.float64) for m in vera_jax.projection(5, 6, 12, 7))  # outside x64: no recompile
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.normal(size=(3, 4, 12)))
        W = jnp.asarray(rng.normal(size=(7, 12)))
        A, B = jnp.asarray(A), jnp.asarray(B)
        ld, lb = jnp.asarray(rng.normal(size=6)), jnp.asarray(rng.normal(size=7))
        mask = jnp.asarray((rng.random((3, 4, 12)) > 0.3).astype(np.float64))
        dy = jnp.asarray(rng.normal(size=(3, 4, 7)))
        for kw in (dict(), dict(dropout_mask=mask, dropout=0.3), dict(dropout_key=jax.random.key(7), dropout=0.3)):
            outs = []
            for remat in (True, False):
                @jax.jit
                def run(x, ld, lb, dy):
                    y, vjp = jax.vjp(lambda x, ld, lb: vera_jax.forward(x, W, None, A, B, ld, lb, remat=remat, **kw),
                                     x, ld, lb)
                    return (y, *vjp(dy))
                got = run(x, ld, lb, dy)
                assert got[0].dtype == jnp.float64
                outs.append([np.asarray(g) for g in got])
            for a, b in zip(*outs):
                assert np.array_equal(a, b)


class MLP(nnx.Module):
    def __init__(self, width, layers, rngs):
        self.layers = nnx.List([nnx.Linear(width, width, rngs=rngs) for _ in range(layers)])

    def __call__(self, x):
        for layer in self.layers:
            x = jax.nn.gelu(layer(x))
        return x


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_an_nnx_model_keeps_only_each_adapted_layers_input_over_the_frozen_model(dropout):
    """JAX's frozen ``x W^T`` keeps no x of its own (W is not trained); the branch needs x, so the input of
    each adapted layer (the model's argument for the first) is the only residual over the frozen model's."""
    width, r, n = 16, 32, 3
    x = jax.random.normal(jax.random.key(1), (2, 3, width))
    gd0, st0 = nnx.split(MLP(width, n, nnx.Rngs(0)))
    floor = computed(lambda x: jnp.mean(nnx.merge(gd0, st0)(x) ** 2), x)

    def adapted_residuals(remat):
        model = MLP(width, n, nnx.Rngs(0))
        apply_vera(model, [f"layers.{i}" for i in range(n)], r=r, seed=0, dropout=dropout,
                   rngs=nnx.Rngs(dropout=1) if dropout else None, remat=remat)
        assert all(isinstance(m, VeraLinear) and m.remat is remat for m in model.layers)
        model.train()
        gd, lam, rng, rest = nnx.split(model, VeraParam, nnx.RngState, ...)
        return computed(lambda lam, rng, x: jnp.mean(nnx.merge(gd, lam, rng, rest)(x) ** 2), lam, rng, x)
    extra = adapted_residuals(True)
    for item in floor:  # minus the floor's residuals, as multisets
        if item in extra:
            extra.remove(item)
    keys = [e for e in extra if e[0] == () and e[1].startswith("key<")]  # each layer's dropout key (a scalar)
    assert len(keys) == (n if dropout else 0)
    arrays = [e for e in extra if e not in keys]
    assert arrays == [((2, 3, width), "float32")] * (n - 1)  # layers 1..n-1's inputs; layer 0's is the argument x
    fat = adapted_residuals(False)
    assert any((2, 3, r) == s for s, _ in fat)  # the plain path keeps h = x A^T: the check can fail
