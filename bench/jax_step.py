"""A jitted JAX/Flax NNX VeRA training step against the same model's frozen step (the floor), in one run.

    python bench/jax_step.py [--layers 4] [--width 768] [--r 256] [--batch 32] [--seq 128] [--repeat 7]

Model: ``--layers`` nnx.Linear(width, width) with gelu between, input (batch, seq, width),
loss = mean of the squared output. Both steps are one ``jax.jit`` of a pure function
(``nnx.split`` / ``nnx.merge``, the NNX functional pattern) and both differentiate down to
the input, so the floor is a real frozen-model backward:

  floor  the model without an adapter: loss and d loss / d x
  VeRA   every layer adapted (r, shared A and B from the seed): loss, d loss / d x and the
         gradients of lambda_d and lambda_b (VeraParam only), then one SGD update of them

"cold" = the first call (trace + compile + run) in a fresh process, "warm" = the median of
``--repeat`` calls; the two steps alternate call by call, so drift of the machine's speed
cancels in the per-round ratio. overhead = VeRA / floor.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "backends"))


def build(args, adapted: bool):
    """(jitted step, its arguments) for the floor or the VeRA model."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from vera_jax.nnx import VeraParam, apply_vera

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.layers = nnx.List([nnx.Linear(args.width, args.width, rngs=rngs) for _ in range(args.layers)])

        def __call__(self, x):
            for i, layer in enumerate(self.layers):
                x = layer(x) if i == len(self.layers) - 1 else jax.nn.gelu(layer(x))
            return x

    model = MLP(nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (args.batch, args.seq, args.width), jnp.float32)
    if not adapted:
        graphdef, state = nnx.split(model)

        @jax.jit
        def floor(state, x):
            def loss(x):
                return jnp.mean(nnx.merge(graphdef, state)(x) ** 2)
            return jax.value_and_grad(loss)(x)
        return floor, (state, x)

    apply_vera(model, [f"layers.{i}" for i in range(args.layers)], r=args.r, seed=0)
    graphdef, lambdas, frozen = nnx.split(model, VeraParam, ...)
    tx = optax.sgd(1e-3)
    opt_state = tx.init(lambdas)

    @jax.jit
    def vera(lambdas, opt_state, frozen, x):
        def loss(lambdas, x):
            return jnp.mean(nnx.merge(graphdef, lambdas, frozen)(x) ** 2)
        value, (g, dx) = jax.value_and_grad(loss, argnums=(0, 1))(lambdas, x)
        updates, opt_state = tx.update(g, opt_state, lambdas)
        return value, dx, optax.apply_updates(lambdas, updates), opt_state
    return vera, (lambdas, opt_state, frozen, x)


def call(fn, fargs) -> float:
    import jax
    t = time.perf_counter()
    jax.block_until_ready(fn(*fargs))
    return time.perf_counter() - t


def cold(which: str, argv: list[str]) -> float:
    """Seconds of the first call (trace, compile, run) in a fresh process."""
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--cold-only", which, *argv],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--r", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--cold-only", choices=["floor", "vera"], help=argparse.SUPPRESS)
    args, _ = ap.parse_known_args()
    if args.cold_only:
        fn, fargs = build(args, args.cold_only == "vera")
        print(call(fn, fargs))
        return
    argv = [a for a in sys.argv[1:]]
    import jax
    import jaxlib
    from flax import __version__ as flax_version
    cold_floor, cold_vera = cold("floor", argv), cold("vera", argv)
    floor, fargs = build(args, False)
    vera, vargs = build(args, True)
    call(floor, fargs), call(vera, vargs)  # compiled and warm
    tf, tv = [], []
    for _ in range(args.repeat):
        tf.append(call(floor, fargs))
        tv.append(call(vera, vargs))
    ratios = [v / f for f, v in zip(tf, tv)]
    mf, mv = statistics.median(tf), statistics.median(tv)
    print(f"# jax {jax.__version__}, jaxlib {jaxlib.__version__}, flax {flax_version}, {jax.devices()[0].platform}, "
          f"{os.cpu_count()} cpus, {platform.machine()}; {args.layers} x nnx.Linear({args.width}, {args.width}), "
          f"batch {args.batch}x{args.seq}, VeRA r={args.r} on every layer, median of {args.repeat} alternating calls")
    print(f"{'':44}{'cold s':>9}{'warm s':>9}{'x floor':>9}")
    print(f"{'floor: frozen model, loss + d/dx':44}{cold_floor:9.3f}{mf:9.3f}{1.0:9.3f}")
    print(f"{'VeRA: + d/dlambda, SGD update (VeraParam)':44}{cold_vera:9.3f}{mv:9.3f}{mv / mf:9.3f}")
    print(f"overhead (median of per-round VeRA/floor) = {statistics.median(ratios):.3f}; "
          f"range {min(ratios):.3f}..{max(ratios):.3f}; cold VeRA/floor = {cold_vera / cold_floor:.3f}")
    n_vec = args.layers * (args.r + args.width)
    print(f"trainable: {n_vec:,} floats ({args.layers} x (r + width)); frozen projections A, B: "
          f"{args.r * args.width * 2:,} floats, built once from the seed, shared by every layer")
    assert np.isfinite(mv / mf)


if __name__ == "__main__":
    main()
