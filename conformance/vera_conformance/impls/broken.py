"""Deliberately wrong implementations: each must fail the check named in ``CAUGHT_BY`` in a
default run (the kit's own meta-tests), and every shipped implementation must pass.

Every one is the reference with one plausible bug, the kind found in real VeRA code:
generator details, slices, tile tails and GEMM switches that only larger shapes reach,
low-precision adapter terms, TF32, training the wrong parameters, dropout in evaluation
mode, projection caches, and file readers and writers that drop a field.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

import vera_ref
from vera_ref.dtypes import round_to
from vera_ref.projection import kaiming_bound

from ..protocol import LayerCase, LoadedAdapter, Trained
from .reference import Reference


def _base(c: LayerCase):
    y = c.x @ (c.W.T if c.layout == "linear" else c.W)
    return y + c.bias if c.bias is not None else y


def _xd(c: LayerCase):
    return c.x if c.dropout_mask is None else c.x * c.dropout_mask / (1 - c.dropout)


def _delta(c: LayerCase, A, B, ld=None, lb=None):
    ld = c.lambda_d if ld is None else ld
    lb = c.lambda_b if lb is None else lb
    return lb * (((_xd(c) @ A[:, :c.in_features].T) * ld) @ B[:c.out_features].T)


# --- the first generation (kept) ------------------------------------------------------------------

class TransposedA(Reference):
    """Builds A as value(T[0]) (n_in, r) and reshapes it to (r, n_in) instead of transposing."""
    name = "broken: A reshaped instead of transposed"

    def projection(self, seed, r, n_in, n_out, group, device):
        A, B = vera_ref.projection(seed, r, n_in, n_out, group)
        return np.ascontiguousarray(A.T).reshape(r, n_in), B


class LambdaDAfterB(Reference):
    """Scales the output of B by lambda_d (wrapped around) instead of the input of B."""
    name = "broken: lambda_d applied after B"

    def forward(self, c: LayerCase):
        A, B = self._proj(c)
        v = (_xd(c) @ A[:, :c.in_features].T) @ B[:c.out_features].T
        return _base(c) + c.lambda_b * v * c.lambda_d[np.arange(c.out_features) % c.r]


class OwnUniform(Reference):
    """Uses NumPy's own uniform sampler instead of the spec's bits-to-float mapping."""
    name = "broken: framework's own uniform"

    def projection(self, seed, r, n_in, n_out, group, device):
        rng = np.random.default_rng(seed)
        bA, bB = float(kaiming_bound(n_in)), float(kaiming_bound(r))
        return (rng.uniform(-bA, bA, (r, n_in)).astype(np.float32), rng.uniform(-bB, bB, (n_out, r)).astype(np.float32))


class BoundFromLayer(Reference):
    """Takes A's Kaiming bound from the layer's own in_features instead of n_in (spec 1.6)."""
    name = "broken: A's bound from the layer's in_features"

    def _proj(self, c: LayerCase):
        A, B = vera_ref.projection(c.seed, c.r, c.n_in, c.n_out, c.group)
        return A * (kaiming_bound(c.in_features) / kaiming_bound(c.n_in)), B


class MergeWithoutLambdaB(Reference):
    """Forgets lambda_b when merging."""
    name = "broken: merge without lambda_b"

    def merge(self, c: LayerCase):
        A, B = self._proj(c)
        dW = B[:c.out_features] @ (c.lambda_d[:, None] * A[:, :c.in_features])
        return c.W + (dW if c.layout == "linear" else dW.T)


class OffByOneSlice(Reference):
    """Slices A from column 1 and B from row 1 (an off-by-one in the leading-slice rule)."""
    name = "broken: off-by-one slice"

    def _proj(self, c: LayerCase):
        A, B = vera_ref.projection(c.seed, c.r, c.n_in + 1, c.n_out + 1, c.group)
        return A[:, 1:], B[1:]


class DropoutOnOutput(Reference):
    """Applies dropout to the adapter's output instead of its input (spec 3.3)."""
    name = "broken: dropout on the output"

    def forward(self, c: LayerCase):
        A, B = self._proj(c)
        h = c.x @ A[:, :c.in_features].T
        delta = c.lambda_b * ((c.lambda_d * h) @ B[:c.out_features].T)
        if c.dropout_mask is not None:
            delta = delta * np.resize(c.dropout_mask, delta.shape) / (1 - c.dropout)
        return _base(c) + delta


# --- item 1: low precision and TF32 (spec 5.2.1, 5.2.2) ---------------------------------------------

class NoAdapterInHalf(Reference):
    """In float16/bfloat16 the adapter branch is skipped (a dtype guard gone wrong): 0.1-1% of y."""
    name = "broken: no adapter term in float16/bfloat16"

    def forward(self, c: LayerCase):
        if c.dtype in ("float16", "bfloat16"):
            return vera_ref.forward(c.x, c.W, c.bias, *self._proj(c), c.lambda_d, np.zeros_like(c.lambda_b),
                                    layout=c.layout, dtype=c.dtype)
        return super().forward(c)


class ShiftedAInHalf(Reference):
    """In float16/bfloat16 a cast kernel reads A one column late (A[:, 1:in+1])."""
    name = "broken: A shifted by one column in float16/bfloat16"

    def forward(self, c: LayerCase):
        if c.dtype in ("float16", "bfloat16"):
            A, B = vera_ref.projection(c.seed, c.r, c.n_in + 1, c.n_out, c.group)
            return vera_ref.forward(c.x, c.W, c.bias, A[:, 1:], B, c.lambda_d, c.lambda_b, layout=c.layout,
                                    dropout_mask=c.dropout_mask, dropout=c.dropout, dtype=c.dtype)
        return super().forward(c)


def _tf32(a):
    """Round binary32 values to TF32 (10 fraction bits, nearest even) as a tensor core does."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0xFFF + ((u >> 13) & 1)) & 0xFFFFE000
    return u.astype(np.uint32).view(np.float32)


class TF32Matmuls(Reference):
    """float32 matmuls on TF32 tensor cores (JAX's and TensorFlow's default on recent GPUs)."""
    name = "broken: float32 computed with TF32 matmuls"
    dtypes = frozenset({"float32", "float64"})

    def forward(self, c: LayerCase):
        if c.dtype not in ("float32", "tf32"):
            return super().forward(c)
        A, B = self._proj(c)
        f = lambda a: _tf32(np.asarray(a, np.float32))  # noqa: E731
        Wt = c.W.T if c.layout == "linear" else c.W
        y = f(c.x) @ f(Wt)
        if c.bias is not None:
            y = y + c.bias.astype(np.float32)
        h = f(_xd(c)) @ f(A[:, :c.in_features].T)
        v = f(h * c.lambda_d.astype(np.float32)) @ f(B[:c.out_features].T)
        return (y + c.lambda_b.astype(np.float32) * v).astype(np.float64)


class DeclaredTF32(TF32Matmuls):
    """The same arithmetic, declared as precision tf32 (spec 5.2.2): conforming for tf32."""
    name = "TF32 matmuls, declared as tf32"
    capabilities = frozenset({"generator", "forward"})
    dtypes = frozenset({"tf32"})


class AlphaOverR(Reference):
    """LoRA habit: the adapter term multiplied by alpha / r (alpha = 8), undeclared."""
    name = "broken: undeclared alpha/r scale"

    def forward(self, c: LayerCase):
        return vera_ref.forward(c.x, c.W, c.bias, *self._proj(c), c.lambda_d, c.lambda_b * (8 / c.r),
                                layout=c.layout, dropout_mask=c.dropout_mask, dropout=c.dropout, dtype=c.dtype)


# --- item 2: code paths of larger shapes, bits inside the forward, state --------------------------

class BoundInFloat32(Reference):
    """projection() is right, but the layer's own kernel computes the bounds in float32
    (sqrt(float32(6) / fan_in)): off by one ulp at fan_in = 41, 45, 59, ... (spec 1.6)."""
    name = "broken: Kaiming bound computed in float32 inside the layer"

    def _proj(self, c: LayerCase):
        A, B = vera_ref.projection(c.seed, c.r, c.n_in, c.n_out, c.group)
        fb = lambda n: np.float32(np.sqrt(np.float32(6) / np.float32(n)))  # noqa: E731
        return (A * (fb(c.n_in) / kaiming_bound(c.n_in)), B * (fb(c.r) / kaiming_bound(c.r)))


class TileTailDropped(Reference):
    """Tiles the in dimension by 64 for x A^T and forgets the partial last tile when in > 64."""
    name = "broken: last partial tile of 64 dropped (in > 64)"

    def forward(self, c: LayerCase):
        A, B = self._proj(c)
        in_f = c.in_features
        k = in_f if in_f <= 64 else (in_f // 64) * 64
        h = _xd(c)[:, :k] @ A[:, :k].T
        return _base(c) + c.lambda_b * ((h * c.lambda_d) @ B[:c.out_features].T)


class GemmPathWithoutLambdaD(Reference):
    """A batched GEMM path for N >= 16 rows merges B with lambda_b but forgets lambda_d."""
    name = "broken: GEMM path (N >= 16) without lambda_d"

    def forward(self, c: LayerCase):
        if c.x.shape[0] >= 16:
            return _base(c) + _delta(c, *self._proj(c), ld=np.ones(c.r))
        return super().forward(c)


class CachedProjection(Reference):
    """Caches the projection by (seed, r, group) and slices the cached pair for later shapes:
    the bound of a smaller n_in is then wrong (spec 1.6)."""
    name = "broken: projection cache keyed by (seed, r, group)"

    def __init__(self) -> None:
        self.cache = {}

    def projection(self, seed, r, n_in, n_out, group, device):
        key = (seed, r, group)
        if key not in self.cache:
            self.cache[key] = vera_ref.projection(seed, r, n_in, n_out, group)
        A, B = self.cache[key]
        if A.shape[1] < n_in or B.shape[0] < n_out:
            self.cache[key] = A, B = vera_ref.projection(seed, r, n_in, n_out, group)
        return A[:, :n_in], B[:n_out]


# --- item 3: training ----------------------------------------------------------------------------

class FullMatrixTraining(Reference):
    """Trains full r x r and out x out matrices (initialised diagonal) instead of two vectors."""
    name = "broken: trains full matrices instead of lambda vectors"

    def train_steps(self, c: LayerCase, lr: float, steps: int) -> Trained:
        A, B = self._proj(c)
        A_l, B_l = A[:, :c.in_features].astype(np.float64), B[:c.out_features].astype(np.float64)
        Ld, Lb = np.diag(c.lambda_d), np.diag(c.lambda_b)  # (r, r), (out, out)
        h = _xd(c) @ A_l.T  # (N, r)
        for _ in range(steps):
            u = h @ Ld  # (N, r)
            v = u @ B_l.T  # (N, out)
            g_v = c.dy @ Lb.T  # (N, out): dL/dv
            dLb = c.dy.T @ v  # (out, out)
            dLd = h.T @ (g_v @ B_l)  # (r, r)
            Ld, Lb = Ld - lr * dLd, Lb - lr * dLb
        return Trained(np.diag(Ld).copy(), np.diag(Lb).copy(), {"vera_lambda_d": Ld, "vera_lambda_b": Lb},
                       c.W, A_l, B_l, c.bias)


class TrainsBaseWeight(Reference):
    """Forgets to freeze W0: the optimizer updates it along with the vectors."""
    name = "broken: W0 not frozen"

    def train_steps(self, c: LayerCase, lr: float, steps: int) -> Trained:
        t = super().train_steps(c, lr, steps)
        dW = c.dy.T @ c.x if c.layout == "linear" else c.x.T @ c.dy
        W = c.W - lr * steps * dW
        return dataclasses.replace(t, W=W, trainable={**t.trainable, "base.weight": W})


class DropoutInEval(Reference):
    """Keeps dropout on in evaluation mode (its own random mask when no mask is given)."""
    name = "broken: dropout active in evaluation mode"

    def forward(self, c: LayerCase):
        if c.dropout > 0 and c.dropout_mask is None:
            mask = (np.random.default_rng(0).random(c.x.shape) >= c.dropout).astype(np.float64)
            c = dataclasses.replace(c, dropout_mask=mask)
        return super().forward(c)


# --- item 4: files -------------------------------------------------------------------------------

class AnyRejection(Reference):
    """Rejects every invalid file, but always for the same made-up reason."""
    name = "broken: reader rejects with any reason"

    def load_adapter(self, path) -> LoadedAdapter:
        try:
            return super().load_adapter(path)
        except vera_ref.AdapterFileError:
            raise vera_ref.AdapterFileError("file", "not a valid VeRA adapter") from None


class IgnoresVectorDtype(Reference):
    """Reads every file as if its vectors were float32."""
    name = "broken: reader ignores vector_dtype"

    def load_adapter(self, path) -> LoadedAdapter:
        return dataclasses.replace(super().load_adapter(path), vector_dtype="float32")


class DropsExtraTensors(Reference):
    """Loads the VeRA vectors and silently drops the extra tensors (a task head)."""
    name = "broken: reader drops extra tensors"

    def load_adapter(self, path) -> LoadedAdapter:
        return dataclasses.replace(super().load_adapter(path), extra={})


class WriterFloat32Vectors(Reference):
    """Writes float32 vectors whatever vector_dtype says (values rounded back only on read)."""
    name = "broken: writer ignores vector_dtype"

    def save_adapter(self, adapter: LoadedAdapter, path) -> None:
        super().save_adapter(dataclasses.replace(adapter, vector_dtype="float32"), path)


class WriterAllLinear(Reference):
    """Writes every module with the linear layout (conv1d lost)."""
    name = "broken: writer loses the conv1d layout"

    def save_adapter(self, adapter: LoadedAdapter, path) -> None:
        mods = [(n, i, o, "linear") for n, i, o, _ in adapter.modules]
        super().save_adapter(dataclasses.replace(adapter, modules=mods), path)


class WriterSeedThroughFloat(Reference):
    """Passes the seed through a JSON number (a float64): seeds above 2^53 change."""
    name = "broken: writer rounds the seed through a float"

    def save_adapter(self, adapter: LoadedAdapter, path) -> None:
        seed = None if adapter.seed is None else min(int(float(adapter.seed)), 2**64 - 1)
        super().save_adapter(dataclasses.replace(adapter, seed=seed), path)


# --- item 5: declarations ------------------------------------------------------------------------

class DeclaredAlphaOverR(AlphaOverR):
    """The alpha/r scale, declared: a named deviation; the math checks fold it in and pass."""
    name = "declared alpha/r scale"
    capabilities = frozenset({"generator", "forward"})
    adapter_scale = staticmethod(lambda r: 8 / r)


class OwnGeneratorNormal(Reference):
    """Declares its own generator but draws A and B from a normal distribution (kaiming_normal_)."""
    name = "broken: own generator, normal instead of uniform"
    generator = "own"

    def projection(self, seed, r, n_in, n_out, group, device):
        rng = np.random.default_rng(seed)
        return (np.clip(rng.normal(0, float(kaiming_bound(n_in)) / math.sqrt(3), (r, n_in)),
                        -float(kaiming_bound(n_in)), float(kaiming_bound(n_in))).astype(np.float32),
                np.clip(rng.normal(0, float(kaiming_bound(r)) / math.sqrt(3), (n_out, r)),
                        -float(kaiming_bound(r)), float(kaiming_bound(r))).astype(np.float32))

    def _proj(self, c: LayerCase):
        return c.A, c.B


class OwnGeneratorUniform(OwnGeneratorNormal):
    """Its own generator, uniform within the right bounds: conforming for an 'own' generator."""
    name = "own generator, uniform (NumPy)"

    def projection(self, seed, r, n_in, n_out, group, device):
        rng = np.random.default_rng(seed)
        bA, bB = float(kaiming_bound(n_in)), float(kaiming_bound(r))
        return (rng.uniform(-bA, bA, (r, n_in)).astype(np.float32),
                rng.uniform(-bB, bB, (n_out, r)).astype(np.float32))


class PeftGenerator(Reference):
    """Claims PEFT's generator (spec 2.5.3) instead of Philox: checked bit-exactly against it."""
    name = "PEFT's MT19937 generator, declared"
    generator = "peft-mt19937"

    def projection(self, seed, r, n_in, n_out, group, device):
        return vera_ref.peft_projection(seed, r, n_in, n_out)


class PeftGeneratorClaimedAsPhilox(PeftGenerator):
    """PEFT's generator without saying so: the projections are not the spec's."""
    name = "broken: PEFT's generator claimed as philox4x32-10"
    generator = "philox4x32-10"


class LambdaBNoGradient(Reference):
    """lambda_b is applied through a detached copy (``.data``), so autograd gives it no gradient:
    the framework's grad is None."""
    name = "broken: lambda_b detached (no gradient)"

    def backward(self, c: LayerCase):
        dx, dld, _ = super().backward(c)
        return dx, dld, None


# --- item 6: accumulators and ranges (spec 5.2.3) ----------------------------------------------------

def _mm_in(a: np.ndarray, b: np.ndarray, dt: str, block: int = 1) -> np.ndarray:
    """a @ b with the accumulator in ``dt``: blocks of ``block`` terms summed in binary32 (1: a
    naive kernel; more: split-K with reduced-precision reductions), the block sums accumulated
    left to right in ``dt`` (each partial sum rounded to the storage dtype)."""
    rnd = lambda v: round_to(v, dt).astype(np.float64)  # noqa: E731
    a, b = rnd(a).astype(np.float32), rnd(b).astype(np.float32)
    acc = np.zeros((a.shape[0], b.shape[1]))
    for k in range(0, a.shape[1], block):
        acc = rnd(acc + rnd(a[:, k:k + block] @ b[k:k + block]))
    return acc


class AccumulateInStorage(Reference):
    """float16/bfloat16 matmuls accumulate their partial sums in the storage dtype (split-K with
    reduced-precision reductions, as cuBLAS may): spec 5.2.3 asks for binary32 sums. The random
    signs of the other checks hide it (their forward passes it)."""
    name = "broken: float16/bfloat16 sums accumulated in float16/bfloat16"
    block = 32  # 1: a naive kernel (caught too, but slow to emulate in bfloat16)

    def forward(self, c: LayerCase):
        if c.dtype not in ("float16", "bfloat16"):
            return super().forward(c)
        dt = c.dtype
        rnd = lambda v: round_to(v, dt).astype(np.float64)  # noqa: E731
        A, B = self._proj(c)
        Wt = c.W.T if c.layout == "linear" else c.W
        y = _mm_in(c.x, Wt, dt, self.block)
        if c.bias is not None:
            y = rnd(y + c.bias)
        h = _mm_in(_xd(c), A[:, :c.in_features].T, dt, self.block)
        v = _mm_in(rnd(h * c.lambda_d), B[:c.out_features].T, dt, self.block)
        return rnd(y + rnd(v * c.lambda_b))


class BFloat16ThroughFloat16(Reference):
    """A half-precision kernel used for bfloat16 too: inputs converted to float16 (same width,
    5 exponent bits instead of 8), so values above 65504 overflow to inf."""
    name = "broken: bfloat16 computed in float16"

    def forward(self, c: LayerCase):
        if c.dtype != "bfloat16":
            return super().forward(c)
        A, B = self._proj(c)
        with np.errstate(over="ignore", invalid="ignore"):
            return vera_ref.forward(c.x, c.W, c.bias, A, B, c.lambda_d, c.lambda_b, layout=c.layout,
                                    dropout_mask=c.dropout_mask, dropout=c.dropout, dtype="float16")


class RowVectorTraining(Reference):
    """Trains lambda_d and lambda_b held as (1, n) row vectors (as mLoRA does): conforming, the
    kit compares the number of trained values with unit axes squeezed."""
    name = "lambda vectors held as (1, n) rows"

    def train_steps(self, c: LayerCase, lr: float, steps: int) -> Trained:
        t = super().train_steps(c, lr, steps)
        ld, lb = t.lambda_d[None, :], t.lambda_b[None, :]
        return dataclasses.replace(t, lambda_d=ld, lambda_b=lb, trainable={"lambda_d": ld, "lambda_b": lb})


# the check of a default run that catches each one (the meta-tests assert it fails there)
CAUGHT_BY = {
    TransposedA: "projection", LambdaDAfterB: "forward", OwnUniform: "projection", BoundFromLayer: "forward",
    MergeWithoutLambdaB: "merge", OffByOneSlice: "forward", DropoutOnOutput: "forward",
    NoAdapterInHalf: "forward", ShiftedAInHalf: "forward", TF32Matmuls: "forward", AlphaOverR: "forward",
    BoundInFloat32: "generator_probe", TileTailDropped: "forward", GemmPathWithoutLambdaD: "forward",
    CachedProjection: "stateless",
    FullMatrixTraining: "train", TrainsBaseWeight: "train", DropoutInEval: "eval_dropout",
    AnyRejection: "files_invalid", IgnoresVectorDtype: "files_valid", DropsExtraTensors: "files_valid",
    WriterFloat32Vectors: "files_roundtrip", WriterAllLinear: "files_roundtrip",
    WriterSeedThroughFloat: "files_roundtrip",
    DeclaredAlphaOverR: "adapter_scale", OwnGeneratorNormal: "projection_distribution",
    PeftGeneratorClaimedAsPhilox: "projection_vectors", LambdaBNoGradient: "backward",
    AccumulateInStorage: "numerics", BFloat16ThroughFloat16: "numerics",
}
BROKEN = list(CAUGHT_BY)
# declared deviations that are conforming in what they declare (the meta-tests assert they pass)
CONFORMING_DECLARED = [DeclaredTF32, OwnGeneratorUniform, PeftGenerator, RowVectorTraining]

# the broken implementations of the checks kept in their own modules (checks_own, checks_writer,
# checks_quantized, the merged forward and eval-mode gradients, numerics' long batches), each module
# with its CAUGHT_BY
from . import broken_merged, broken_numeric, broken_own, broken_quantized, broken_writer  # noqa: E402

for _m in (broken_own, broken_writer, broken_quantized, broken_merged, broken_numeric):
    CAUGHT_BY.update(_m.CAUGHT_BY)
    CONFORMING_DECLARED += [c for c in getattr(_m, "CONFORMING_DECLARED", []) if c not in CONFORMING_DECLARED]
    BROKEN += [c for c in _m.CAUGHT_BY if c not in BROKEN]
