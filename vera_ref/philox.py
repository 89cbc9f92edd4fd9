"""Philox4x32-10, vectorised over counters (spec 1.1-1.3).

Constants and round function as in Random123 ``philox.h`` (Salmon, Moraes, Dror,
Shaw, "Parallel Random Numbers: As Easy as 1, 2, 3", SC'11). One round, in the
pseudo-code of spec 1.2::

    (hi0, lo0) = mulhilo32(M0, c0)
    (hi1, lo1) = mulhilo32(M1, c2)
    c' = (hi1 ^ c1 ^ k0,  lo1,  hi0 ^ c3 ^ k1,  lo0)
    k' = (k0 + W0, k1 + W1) mod 2^32          # bumped between rounds

32x32->64 products are taken in uint64, which holds them exactly.
"""
from __future__ import annotations

import numpy as np

from .errors import ProjectionError

# spec 1.1 -- Random123 philox.h: PHILOX_M4x32_0, PHILOX_M4x32_1
M0 = 0xD2511F53
M1 = 0xCD9E8D57
# spec 1.1 -- Random123 philox.h: PHILOX_W32_0 (golden ratio), PHILOX_W32_1 (sqrt(3)-1)
W0 = 0x9E3779B9
W1 = 0xBB67AE85
ROUNDS = 10  # spec 1.1 -- Random123's default and the one cuRAND uses
MASK32 = 0xFFFFFFFF

_M0 = np.uint64(M0)
_M1 = np.uint64(M1)
_SHIFT = np.uint64(32)
_MASK = np.uint64(MASK32)


def round_keys(key: tuple[int, int], rounds: int = ROUNDS) -> list[tuple[int, int]]:
    """The key of each round: round i uses (k0 + i*W0, k1 + i*W1) mod 2^32 (spec 1.2)."""
    k0, k1 = key
    return [((k0 + i * W0) & MASK32, (k1 + i * W1) & MASK32) for i in range(rounds)]


def philox_words(
    c0: np.ndarray | int,
    c1: np.ndarray | int,
    c2: np.ndarray | int,
    c3: np.ndarray | int,
    key: tuple[int, int],
    rounds: int = ROUNDS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Philox4x32 on counter words given as uint64 arrays (or ints) holding 32-bit values.

    Words that are plain ints stay scalars until a round mixes them with an array,
    which saves work when most of the counter is constant (spec 1.4 layout).
    Returns the four output words as uint64 arrays with values below 2^32.
    """
    w = [c if isinstance(c, np.ndarray) else np.uint64(c) for c in (c0, c1, c2, c3)]
    x0, x1, x2, x3 = w
    for k0, k1 in round_keys(key, rounds):
        p0 = x0 * _M0  # exact 64-bit product of two 32-bit words
        p1 = x2 * _M1
        x0 = (p1 >> _SHIFT) ^ x1 ^ np.uint64(k0)
        x1 = p1 & _MASK
        x2 = (p0 >> _SHIFT) ^ x3 ^ np.uint64(k1)
        x3 = p0 & _MASK
    return x0, x1, x2, x3


def philox4x32(counters: np.ndarray, key: np.ndarray, rounds: int = ROUNDS) -> np.ndarray:
    """Philox4x32-R of each counter under one key (spec 1.1-1.2).

    counters: uint32 (N, 4), words c0..c3; key: uint32 (2,), words k0, k1.
    Returns uint32 (N, 4).
    """
    counters = np.asarray(counters)
    key = np.asarray(key)
    if counters.ndim != 2 or counters.shape[1] != 4:
        raise ProjectionError(f"counters must have shape (N, 4), got {counters.shape}")
    if key.shape != (2,):
        raise ProjectionError(f"key must have shape (2,), got {key.shape}")
    if counters.dtype != np.uint32 or key.dtype != np.uint32:
        raise ProjectionError(
            f"counters and key must be uint32, got {counters.dtype} and {key.dtype}"
        )
    if not 1 <= rounds <= 16:
        raise ProjectionError(f"rounds must be in [1, 16], got {rounds}")
    c = counters.astype(np.uint64)  # (N, 4)
    words = philox_words(c[:, 0], c[:, 1], c[:, 2], c[:, 3], (int(key[0]), int(key[1])), rounds)
    out = np.empty(counters.shape, dtype=np.uint32)  # (N, 4)
    for i, wi in enumerate(words):
        out[:, i] = np.broadcast_to(wi, (counters.shape[0],))
    return out


def philox4x32_scalar(
    counter: tuple[int, int, int, int], key: tuple[int, int], rounds: int = ROUNDS
) -> tuple[int, int, int, int]:
    """Plain-Python Philox4x32-R of one counter: the readable twin of ``philox4x32``."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(rounds):
        p0 = M0 * c0
        p1 = M1 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & MASK32, (p0 >> 32) ^ c3 ^ k1, p0 & MASK32
        k0, k1 = (k0 + W0) & MASK32, (k1 + W1) & MASK32
    return c0, c1, c2, c3
