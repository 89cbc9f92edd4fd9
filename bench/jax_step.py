"""A jitted JAX/Flax NNX VeRA training step against the same model's frozen step (the floor), in one run.

    python bench/jax_step.py [--layers 4] [--width 768] [--r 256] [--batch 32] [--seq 128] [--repeat 7]

Model: ``--layers`` nnx.Linear(width, width) with gelu between, input (batch, seq, width),
loss = mean of the squared output. Both steps are one ``jax.jit`` of a pure function
(``nnx.split`` / ``nnx.merge``, the NNX functional pattern) and both differentiate down to
the input, so the floor is a real frozen-model backward:

  floor  the model without an adapter: loss and d loss / d x
  VeRA   every layer adapted (r, shared A and B from the seed): loss, d loss / d x and the
         gradients of lambda_d and lambda_b (VeraParam only), then one SGD update of them;
         the default (remat: the adapter branch saves nothing of its own for backward)
  plain  the same with ``remat=False`` (every intermediate of the branch kept)

Memory, in the same run: "resid MiB" is the bytes of the residuals JAX keeps between forward
and backward that the step computes (``saved_residuals`` of the loss, the inputs not counted),
"over floor" that minus the floor's; "XLA temp MiB" is the compiled step's temporary buffers
(``jit(...).lower(...).compile().memory_analysis()``), the peak XLA plans for on this backend.

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


def build(args, adapted: bool, remat: bool = True):
    """(jitted step, its arguments, the loss and its arguments) for the floor or the VeRA model."""
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

        def floor_loss(x):
            return jnp.mean(nnx.merge(graphdef, state)(x) ** 2)

        @jax.jit
        def floor(state, x):
            def loss(x):
                return jnp.mean(nnx.merge(graphdef, state)(x) ** 2)
            return jax.value_and_grad(loss)(x)
        return floor, (state, x), floor_loss, (x,)

    apply_vera(model, [f"layers.{i}" for i in range(args.layers)], r=args.r, seed=0, remat=remat)
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

    def vera_loss(lambdas, x):
        return jnp.mean(nnx.merge(graphdef, lambdas, frozen)(x) ** 2)
    return vera, (lambdas, opt_state, frozen, x), vera_loss, (lambdas, x)


def memory(fn, fargs, loss, largs) -> tuple[int, int]:
    """(bytes of the residuals the loss's backward keeps that it computes, XLA temp bytes of the compiled step)."""
    from jax._src.ad_checkpoint import saved_residuals  # what jax.ad_checkpoint.print_saved_residuals prints
    resid = sum(a.size * a.dtype.itemsize for a, why in saved_residuals(loss, *largs)
                if not why.startswith(("from the argument", "from a constant")) and hasattr(a.dtype, "itemsize"))
    ma = fn.lower(*fargs).compile().memory_analysis()
    return int(resid), int(ma.temp_size_in_bytes) if ma is not None else -1


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
    ap.add_argument("--cold-only", choices=["floor", "vera", "plain"], help=argparse.SUPPRESS)
    args, _ = ap.parse_known_args()
    if args.cold_only:
        fn, fargs, _, _ = build(args, args.cold_only != "floor", remat=args.cold_only != "plain")
        print(call(fn, fargs))
        return
    argv = [a for a in sys.argv[1:]]
    import jax
    import jaxlib
    from flax import __version__ as flax_version
    steps = {"floor": build(args, False), "vera": build(args, True), "plain": build(args, True, remat=False)}
    colds = {k: cold(k, argv) for k in steps}
    mem = {k: memory(*v) for k, v in steps.items()}
    for fn, fargs, _, _ in steps.values():
        call(fn, fargs)  # compiled and warm
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(args.repeat):
        for k, (fn, fargs, _, _) in steps.items():
            times[k].append(call(fn, fargs))
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = {k: [v / f for f, v in zip(times["floor"], times[k])] for k in steps}
    print(f"# jax {jax.__version__}, jaxlib {jaxlib.__version__}, flax {flax_version}, {jax.devices()[0].platform}, "
          f"{os.cpu_count()} cpus, {platform.machine()}; {args.layers} x nnx.Linear({args.width}, {args.width}), "
          f"batch {args.batch}x{args.seq}, VeRA r={args.r} on every layer, median of {args.repeat} alternating calls")
    mib = 1 << 20
    print(f"{'':46}{'cold s':>8}{'warm s':>8}{'x floor':>8}{'resid MiB':>11}{'over floor':>11}{'XLA temp MiB':>14}")
    rows = {"floor": "floor: frozen model, loss + d/dx", "vera": "VeRA (remat, default): + d/dlambda, SGD",
            "plain": "VeRA remat=False (intermediates kept)"}
    for k, label in rows.items():
        resid, temp = mem[k]
        print(f"{label:46}{colds[k]:8.3f}{med[k]:8.3f}{statistics.median(ratios[k]):8.3f}{resid / mib:11.2f}"
              f"{(resid - mem['floor'][0]) / mib:11.2f}{temp / mib:14.2f}")
    act = args.batch * args.seq * args.width * 4
    print(f"one layer input x (batch x seq x width float32) = {act / mib:.2f} MiB; JAX's frozen x W^T keeps no x, "
          f"the adapter branch needs each adapted layer's x: the floor of issue 25 is "
          f"{(args.layers - 1) * act / mib:.2f} MiB over the frozen model (layer 0's x is the input)")
    print(f"x floor = median of per-round step/floor; range VeRA {min(ratios['vera']):.3f}..{max(ratios['vera']):.3f}, "
          f"plain {min(ratios['plain']):.3f}..{max(ratios['plain']):.3f}")
    n_vec = args.layers * (args.r + args.width)
    print(f"trainable: {n_vec:,} floats ({args.layers} x (r + width)); frozen projections A, B: "
          f"{args.r * args.width * 2:,} floats, built once from the seed, shared by every layer")
    assert all(np.isfinite(v) for v in med.values())


if __name__ == "__main__":
    main()
