"""vera_jax through the public door: pure JAX functions for the math, Flax NNX layers for training
and files, on the CPU (and a GPU when jax has one).

    vera-ref conformance --impl vera_conformance.impls.jax_impl:make --dtype float32,bfloat16

Each method builds what it needs from the case and returns NumPy arrays; adding a capability
is one more method (the protocol's table says which).
"""
from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..protocol import CAPABILITIES, Implementation, LayerCase, LoadedAdapter

_DT = {"float32": jnp.float32, "float16": jnp.float16, "bfloat16": jnp.bfloat16}


def _has_gpu() -> bool:
    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


class JaxImpl(Implementation):
    name = "vera_jax (JAX / Flax NNX)"
    capabilities = frozenset({"generator", "forward", "backward", "merge", "unmerge", "files", "merged_forward"}
                             | ({"train"} & set(CAPABILITIES)))
    dtypes = frozenset({"float32", "float16", "bfloat16"})  # float64 needs jax_enable_x64, not claimed

    def __init__(self) -> None:
        self.devices = frozenset({"cpu", "cuda"} if _has_gpu() else {"cpu"})

    @staticmethod
    def _on(device: str):
        return jax.default_device(jax.devices("gpu" if device == "cuda" else "cpu")[0])

    # -- generator ---------------------------------------------------------------------------------
    def projection(self, seed, r, n_in, n_out, group, device):
        import vera_jax
        with self._on(device):
            A, B = vera_jax.projection(seed, r, n_in, n_out, group)
        return np.asarray(A), np.asarray(B)

    def philox(self, counters, key, device):
        import vera_jax
        with self._on(device):
            return np.asarray(vera_jax.philox4x32(counters, key))

    # -- math: the pure functions -------------------------------------------------------------------
    def _args(self, c: LayerCase):
        """x, W, bias, A, B, lambda_d, lambda_b, mask as jax arrays of the case's dtype; A, B from our generator."""
        import vera_jax
        if c.dtype not in _DT:  # a clear refusal: the kit's probe reports "not supported"
            raise NotImplementedError(f"{c.dtype} is not supported by this wrapper (float64 needs jax_enable_x64)")
        dt = _DT[c.dtype]
        A, B = vera_jax.projection(c.seed, c.r, c.n_in, c.n_out, c.group)  # float32, spec 2.1

        def arr(a):
            return None if a is None else jnp.asarray(a, dt)
        return (arr(c.x), arr(c.W), arr(c.bias), A.astype(dt), B.astype(dt), arr(c.lambda_d), arr(c.lambda_b),
                arr(c.dropout_mask))

    def forward(self, c: LayerCase):
        import vera_jax
        with self._on(c.device):
            x, W, bias, A, B, ld, lb, mask = self._args(c)
            f = jax.jit(lambda x, W, bias, A, B, ld, lb, mask: vera_jax.forward(
                x, W, bias, A, B, ld, lb, layout=c.layout, dropout_mask=mask, dropout=c.dropout))
            return np.asarray(f(x, W, bias, A, B, ld, lb, mask).astype(jnp.float32))

    def backward(self, c: LayerCase):
        import vera_jax
        with self._on(c.device):
            x, W, bias, A, B, ld, lb, mask = self._args(c)

            @jax.jit
            def grads(x, ld, lb, dy):
                def f(x, ld, lb):
                    return vera_jax.forward(x, W, bias, A, B, ld, lb, layout=c.layout, dropout_mask=mask,
                                            dropout=c.dropout)
                _, vjp = jax.vjp(f, x, ld, lb)  # spec 3.4 through jax's own differentiation
                return vjp(dy)
            dx, dld, dlb = grads(x, ld, lb, jnp.asarray(c.dy, x.dtype))
            return tuple(np.asarray(g.astype(jnp.float32)) for g in (dx, dld, dlb))

    def merge(self, c: LayerCase):
        import vera_jax
        with self._on(c.device):
            x, W, bias, A, B, ld, lb, _ = self._args(c)
            return np.asarray(jax.jit(lambda *a: vera_jax.merge(*a, layout=c.layout))(W, A, B, ld, lb)
                              .astype(jnp.float32))

    def unmerge(self, c: LayerCase, W_merged):
        import vera_jax
        with self._on(c.device):
            x, W, bias, A, B, ld, lb, _ = self._args(c)
            Wm = jnp.asarray(W_merged, W.dtype)
            return np.asarray(jax.jit(lambda *a: vera_jax.unmerge(*a, layout=c.layout))(Wm, A, B, ld, lb)
                              .astype(jnp.float32))

    def merged_forward(self, c: LayerCase):
        """vera_jax.nnx.merge_and_unload on a model holding the case's VeraLinear: the plain nnx.Linear
        it puts back, its forward; then vera_jax.unmerge of that kernel and vera_jax.forward with it."""
        import vera_jax
        from flax import nnx

        from vera_jax.nnx import merge_and_unload
        with self._on(c.device):
            x, W, bias, A, B, ld, lb, _ = self._args(c)
            model = nnx.Module()
            model.layer = self._layer(c, (x, W, bias, A, B, ld, lb, None))
            merge_and_unload(model)  # model.layer is now the nnx.Linear with the merged kernel (in, out)
            y_m = nnx.jit(lambda lin, x: lin(x))(model.layer, x)

            @jax.jit
            def unmerged(x, k, bias, A, B, ld, lb):
                k0 = vera_jax.unmerge(k, A, B, ld, lb, layout="conv1d")  # (in, out)
                return vera_jax.forward(x, k0.T if c.layout == "linear" else k0, bias, A, B, ld, lb, layout=c.layout)
            y_u = unmerged(x, model.layer.kernel[...], bias, A, B, ld, lb)
            return tuple(np.asarray(y.astype(jnp.float32)) for y in (y_m, y_u))

    # -- training: a Flax NNX layer and nnx.Optimizer on the VeRA vectors only ---------------------
    def _layer(self, c: LayerCase, args=None):
        """One VeraLinear of the case (evaluation mode when the case has no mask, spec 3.3); ``args``:
        what _args(c) gave, when the caller has it."""
        from flax import nnx

        from vera_jax.nnx import VeraLinear, VeraProjection, VeraSettings
        x, W, bias, A, B, ld, lb, mask = self._args(c) if args is None else args
        dt = _DT[c.dtype]
        zeros = nnx.initializers.zeros_init()  # the case's W0 and bias are put in next (no random draw per shape)
        base = nnx.Linear(c.in_features, c.out_features, use_bias=bias is not None, dtype=dt, param_dtype=dt,
                          precision=lax.Precision.HIGHEST, kernel_init=zeros, bias_init=zeros, rngs=nnx.Rngs(0))
        base.kernel[...] = W.T if c.layout == "linear" else W  # nnx kernel is (in, out)
        if bias is not None:
            base.bias[...] = bias
        settings = VeraSettings(c.r, "philox4x32-10", c.seed, "shared", 0.1, c.dropout, c.dtype)
        layer = VeraLinear(base, VeraProjection(A), VeraProjection(B), ld, lb, settings=settings,
                           group=c.group, layout=c.layout, rngs=nnx.Rngs(dropout=0) if c.dropout else None)
        if mask is None and layer.drop is not None:
            layer.eval()  # spec 3.3: no mask means evaluation, dropout is the identity
        return layer

    def train_steps(self, c: LayerCase, lr: float, steps: int):
        """``steps`` plain SGD steps on sum(dy * y) of one VeraLinear, only VeraParam trained."""
        import optax
        from flax import nnx

        from vera_jax.nnx import VeraParam

        from ..protocol import Trained
        with self._on(c.device):
            x, W, bias, A, B, ld, lb, mask = self._args(c)
            dt = _DT[c.dtype]
            layer = self._layer(c, (x, W, bias, A, B, ld, lb, mask))
            opt = nnx.Optimizer(layer, optax.sgd(lr), wrt=VeraParam)
            dy = jnp.asarray(c.dy, dt)

            @nnx.jit
            def step(layer, opt, x, dy, mask):
                def loss(layer):
                    return jnp.sum(dy.astype(jnp.float32) * layer(x, dropout_mask=mask).astype(jnp.float32))
                g = nnx.grad(loss, argnums=nnx.DiffState(0, VeraParam))(layer)
                opt.update(layer, g)

            for _ in range(steps):
                step(layer, opt, x, dy, mask)
            trained = {"lambda_d": np.asarray(layer.lambda_d[...], np.float64),
                       "lambda_b": np.asarray(layer.lambda_b[...], np.float64)}
            if {k for k, _ in nnx.to_flat_state(nnx.state(layer, VeraParam))} != {("lambda_d",), ("lambda_b",)}:
                raise AssertionError("VeraParam must be exactly lambda_d and lambda_b")
            kernel = np.asarray(layer.base.kernel[...].astype(jnp.float32), np.float64)
            return Trained(trained["lambda_d"], trained["lambda_b"], trained,
                           kernel.T if c.layout == "linear" else kernel,
                           np.asarray(layer.A[...].astype(jnp.float32)), np.asarray(layer.B[...].astype(jnp.float32)),
                           None if bias is None else np.asarray(layer.base.bias[...].astype(jnp.float32), np.float64))

    # -- files: a Flax NNX model with exactly the file's modules -----------------------------------
    @staticmethod
    def _file_model(modules, extra=None, extra_dtypes=None):
        """A Flax NNX model with exactly the file's modules, and an nnx.Linear task head for each owner
        of extra tensors, in float64 when one of them is float64 (needs x64 on), else float32 (which
        holds float16 and bfloat16 values exactly)."""
        from flax import nnx

        class Node(nnx.Module):
            pass

        root = Node()

        def at(parts):
            node = root
            for p in parts:
                if not hasattr(node, p):
                    setattr(node, p, Node())
                node = getattr(node, p)
            return node

        for name, fi, fo, _layout in modules:
            *owner, leaf = name.split(".")
            setattr(at(owner), leaf, nnx.Linear(fi, fo, rngs=nnx.Rngs(0)))
        heads: dict[str, dict[str, tuple]] = {}
        wide: set[str] = set()
        for key, arr in (extra or {}).items():
            owner, _, pname = key.rpartition(".")
            heads.setdefault(owner, {})[pname] = np.shape(arr)
            if (extra_dtypes or {}).get(key) == "float64":
                wide.add(owner)
        for owner, params in heads.items():  # a task head: an nnx.Linear of the tensors' shapes
            if "weight" in params:
                fo, fi = params["weight"]
            else:
                fi, fo = params.get("kernel", (1, 1))
            dt = jnp.float64 if owner in wide else jnp.float32
            *parent, leaf = owner.split(".")
            setattr(at(parent), leaf, nnx.Linear(fi, fo, use_bias="bias" in params, dtype=dt, param_dtype=dt,
                                                 rngs=nnx.Rngs(0)))
        return root

    def load_adapter(self, path) -> LoadedAdapter:
        """What vera_jax holds after loading the file into a Flax model: every field read back through
        vera_jax.nnx.to_adapter (the vectors, the heads' values, the kept fields), none from the file."""
        from vera_jax import read_adapter
        from vera_jax.nnx import load_adapter, to_adapter
        ad = read_adapter(path)  # spec 4.6, rule 26 against vera_jax's generator
        mods = [(m.name, m.in_features, m.out_features, m.layout) for m in ad.config.modules]
        dtypes = {k: d for k, (_, d) in ad.extra.items()}
        wide = ad.config.vector_dtype == "float64" or "float64" in dtypes.values()
        x64 = jax.enable_x64(True) if wide else contextlib.nullcontext()
        with x64:  # float64 vectors and extra tensors are held exactly only with x64 on
            model = self._file_model(mods, {k: v for k, (v, _) in ad.extra.items()}, dtypes)
            load_adapter(model, ad, check_fingerprint=False,
                         rngs=nnx_rngs() if ad.config.dropout > 0 else None)
            return LoadedAdapter.of(to_adapter(model, fingerprint=False))

    def save_adapter(self, adapter: LoadedAdapter, path) -> None:
        """vera_jax writes what it holds: the content loaded into a Flax model with its modules (and
        base kernels, when the base weights are given), then saved by vera_jax.nnx.save_adapter with
        the base model's fields given; the fingerprint, when the base is known, computed by vera_jax."""
        from flax import nnx

        from vera_jax.nnx import load_adapter, save_adapter
        wide = adapter.vector_dtype == "float64" or "float64" in adapter.extra_dtypes.values()
        x64 = jax.enable_x64(True) if wide else contextlib.nullcontext()
        with x64:  # float64 vectors and extra tensors are held exactly only with x64 on
            model = self._file_model(adapter.modules, adapter.extra, adapter.extra_dtypes)
            layouts = {name: layout for name, _, _, layout in adapter.modules}
            lins = {".".join(map(str, p)): m for p, m in nnx.iter_modules(model)}
            for name, W in (adapter.base_weights or {}).items():  # W0: (out, in) linear, (in, out) conv1d
                W = jnp.asarray(np.asarray(W, np.float32))
                lins[name].kernel[...] = W.T if layouts[name] == "linear" else W  # the kernel is (in, out)
            load_adapter(model, adapter.to_adapter(), check_fingerprint=adapter.base_weights is not None,
                         rngs=nnx_rngs() if adapter.dropout > 0 else None)
            bm = dict(adapter.base_model or {})
            if adapter.base_weights is not None:
                bm.pop("fingerprint", None)  # the base is known: vera_jax fingerprints its kernels (spec 4.3)
            save_adapter(model, path, fingerprint=adapter.base_weights is not None, base_model=bm)


def nnx_rngs():
    """The dropout stream a VeraLinear with dropout > 0 needs (unused here: no training)."""
    from flax import nnx
    return nnx.Rngs(dropout=0)


def make() -> JaxImpl:
    return JaxImpl()
