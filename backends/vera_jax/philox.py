"""Philox4x32-10 projections in ``jax.numpy`` uint32 ops, bit-identical to ``vera_ref`` (spec 1-2).

Every value is a uint32; nothing needs ``jax_enable_x64``. The 32x32->64-bit product of
spec 1.2 is taken as two uint32 halves: ``lo = a * M`` (uint32 multiply wraps mod 2^32)
and ``hi = lax.mulhi(a, M)`` (the high word of the exact product). The key is a traced
uint32 pair, so one compiled kernel serves every seed.

The float mapping is spec 1.5 with nothing for XLA to rewrite: ``(u >> 7) | 1`` is
``2*m24 + 1``; minus 2^24 it is the odd int32 ``s``; int32 -> float32 is exact for
``|s| < 2^24``; then one float32 multiply by ``float32(bound) * 2^-24``. There is no
addition after the multiply, so contraction into a fused multiply-add cannot occur, and
the result passes ``lax.optimization_barrier`` so that a jitted caller cannot fold the
scale into a later matmul (tests/jax/test_jax_projection.py checks eager and jitted
results against ``vera_ref`` bit for bit, and the mapping on every 24-bit value).
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from vera_ref import generators, kaiming_bound
from vera_ref.errors import ProjectionError
from vera_ref.philox import M0, M1, ROUNDS, W0, W1

MATRIX_A, MATRIX_B = 0, 1  # spec 1.4: m = 0 for A, 1 for B
WORD_LIMIT = 1 << 32  # spec 1.4: n, k div 4, m, g below 2^32
RANK_LIMIT = WORD_LIMIT * 4
BLOCK = 1 << 21  # counters per kernel call: bounds the uint32 temporaries to tens of MB
_GRID = 1 << 24  # spec 1.5: s = 2*m24 + 1 - 2^24

_M0, _M1 = np.uint32(M0), np.uint32(M1)
_W0, _W1 = np.uint32(W0), np.uint32(W1)


def philox_words(c0: jax.Array, c1: jax.Array, c2: jax.Array, c3: jax.Array,
                 key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """spec 1.2, ten rounds, on uint32 arrays that broadcast; ``key`` uint32 (2,). Jittable."""
    c0, c1, c2, c3 = (jnp.asarray(c, dtype=jnp.uint32) for c in (c0, c1, c2, c3))
    key = jnp.asarray(key, dtype=jnp.uint32)
    k0, k1 = key[0], key[1]
    for _ in range(ROUNDS):
        hi0, lo0 = lax.mulhi(c0, jnp.uint32(_M0)), c0 * _M0  # M0 * c0 as (hi, lo)
        hi1, lo1 = lax.mulhi(c2, jnp.uint32(_M1)), c2 * _M1  # M1 * c2 as (hi, lo)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = k0 + _W0, k1 + _W1  # uint32 adds wrap: the round keys of spec 1.2
    return c0, c1, c2, c3


@jax.jit
def _philox4x32(counters: jax.Array, key: jax.Array) -> jax.Array:
    w = philox_words(counters[:, 0], counters[:, 1], counters[:, 2], counters[:, 3], key)
    return jnp.stack(w, axis=1)  # (N, 4)


def philox4x32(counters, key) -> jax.Array:
    """Philox4x32-10 of each counter (spec 1.1-1.2): counters uint32 (N, 4), key uint32 (2,) -> uint32 (N, 4)."""
    counters, key = np.asarray(counters), np.asarray(key)
    if counters.ndim != 2 or counters.shape[1] != 4 or counters.dtype != np.uint32:
        raise ProjectionError(f"counters must be uint32 (N, 4), got {counters.dtype} {counters.shape}")
    if key.shape != (2,) or key.dtype != np.uint32:
        raise ProjectionError(f"key must be uint32 (2,), got {key.dtype} {key.shape}")
    return _philox4x32(jnp.asarray(counters), jnp.asarray(key))


def words_to_float(words: jax.Array, bound) -> jax.Array:
    """spec 1.5: uint32 words -> float32, ``float32(s) * (float32(bound) * 2^-24)``, one rounding.

    ``bound`` is a float32 scalar (a traced one is fine). (u >> 7) | 1 == 2*(u >> 8) + 1 < 2^25,
    so the int32 ``s`` below is exact, and so is its conversion to float32 (|s| < 2^24).
    """
    scale = jnp.asarray(bound, dtype=jnp.float32) * np.float32(2.0**-24)  # exact: power-of-two scaling
    s = lax.bitcast_convert_type((jnp.asarray(words, jnp.uint32) >> 7) | np.uint32(1), jnp.int32) - np.int32(_GRID)
    return lax.convert_element_type(s, jnp.float32) * scale  # the one binary32 multiply


@partial(jax.jit, static_argnums=(4, 5))
def _block(key: jax.Array, m: jax.Array, g: jax.Array, n0: jax.Array, rows: int, n_kb: int,
           bound: jax.Array) -> jax.Array:
    """value(T[m, g][n0 : n0+rows, 0 : 4*n_kb]) as float32 (rows, 4*n_kb) (spec 1.4-1.5)."""
    n = n0 + jnp.arange(rows, dtype=jnp.uint32)[:, None]  # c0 = feature index, (rows, 1)
    kb = jnp.arange(n_kb, dtype=jnp.uint32)[None, :]  # c1 = k div 4, (1, n_kb)
    w = philox_words(n, kb, m, g, key)  # 4 x (rows, n_kb): word j is column 4*kb + j
    vals = words_to_float(jnp.stack(w, axis=-1), bound)  # (rows, n_kb, 4)
    return lax.optimization_barrier(vals.reshape(rows, 4 * n_kb))


def _bucket(n: int) -> int:
    """Pad a size to a power of two (at least 8): few shapes, few compilations."""
    return max(8, 1 << (int(n) - 1).bit_length())


def table_values(key: jax.Array, m: int, g: int, n_count: int, r: int, bound) -> jax.Array:
    """value(T[m, g][0:n_count, 0:r]) as float32 (n_count, r), on the default device (spec 1.4-1.5).

    A slice of a larger table is the smaller table (spec 1.4), so the kernel runs on padded
    power-of-two blocks and the result is cut to size.
    """
    n_kb = (int(r) + 3) // 4
    kb_pad = _bucket(n_kb)
    rows = min(_bucket(n_count), max(8, BLOCK // kb_pad))
    key = jnp.asarray(key, dtype=jnp.uint32)
    m_, g_, b_ = jnp.uint32(m), jnp.uint32(g), jnp.float32(bound)
    parts = [_block(key, m_, g_, jnp.uint32(n0), rows, kb_pad, b_) for n0 in range(0, int(n_count), rows)]
    out = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=0)
    return out[:n_count, :r]


def _count(name: str, value, limit: int) -> int:
    """The reference's rule and words for a size argument (vera_ref.projection)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ProjectionError(f"{name} must be an integer, got {type(value).__name__}")
    if not 1 <= int(value) <= limit:
        raise ProjectionError(f"{name} must be in [1, {limit}], got {value}")
    return int(value)


def key_of_seed(seed: int) -> np.ndarray:
    """spec 1.3: the key (seed mod 2^32, seed div 2^32) as uint32 (2,), after the registry's seed check."""
    seed = generators.get("philox4x32-10").check_seed(seed)
    return np.array([seed & 0xFFFFFFFF, seed >> 32], dtype=np.uint32)


def projection(seed: int, r: int, n_in: int, n_out: int, group: int = 0) -> tuple[jax.Array, jax.Array]:
    """spec 2.1 in JAX: A float32 (r, n_in), B float32 (n_out, r); equal to ``vera_ref.projection`` bit for bit."""
    key = key_of_seed(seed)
    r, n_in, n_out = _count("r", r, RANK_LIMIT), _count("n_in", n_in, WORD_LIMIT), _count("n_out", n_out, WORD_LIMIT)
    if isinstance(group, bool) or not isinstance(group, (int, np.integer)) or not 0 <= group < WORD_LIMIT:
        raise ProjectionError(f"group must be in [0, 2^32), got {group!r}")
    A = table_values(key, MATRIX_A, int(group), n_in, r, kaiming_bound(n_in)).T  # (r, n_in), spec 1.6: fan_in n_in
    B = table_values(key, MATRIX_B, int(group), n_out, r, kaiming_bound(r))  # (n_out, r), fan_in r
    return A, B
