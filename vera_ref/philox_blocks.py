"""Philox4x32-10 over a block of the projection table, fast (spec 1.2, 1.4).

The counters of table ``T[m, g]`` are ``(n, kb, m, g)``: over a block of ``KB``
rank groups and ``N`` features the counter varies only in a row (``n``) and a
column (``kb``). Rounds 0-1 therefore work on a ``(1, N)`` row and a ``(KB, 1)``
column, and full ``(KB, N)`` arrays appear from round 1 on. Results are the words of
``philox.philox_words`` bit for bit (tested); this file only reorders the work.

From round 3 on the two multiplied words travel as one pair array ``X = (x0; x2)``
of shape ``(2,) + S``, so each round is three NumPy calls instead of six: at block
sizes that fit a core's cache the per-call cost is a large share of the time
(``bench/rng.py``). ``X`` is a uint64 array whose high halves stay zero: only its low
halves are written (a strided uint32 view), so the multiply is uint64 x uint64 with no
cast. High and low halves of each uint64 product are read as strided uint32 views.
Round i's key is xored into the low halves of round i-1's products (a uint64 pass
that leaves the high halves alone) before they are read, instead of into ``X`` after.
"""
from __future__ import annotations

import numpy as np

from .philox import M0, M1, ROUNDS, round_keys

_U32 = np.uint32
_U64 = np.uint64
_M0 = np.uint64(M0)
_M1 = np.uint64(M1)
_M_PAIR = np.array([M0, M1], dtype=np.uint64)  # (2,): x0 * M0, x2 * M1 (spec 1.2)


def _hi(p: np.ndarray) -> np.ndarray:
    return p.view(_U32)[..., 1::2]  # little-endian: high word second


def _lo(p: np.ndarray) -> np.ndarray:
    return p.view(_U32)[..., 0::2]


class BlockPhilox:
    """Reusable buffers for blocks of at most ``size`` counters."""

    def __init__(self, size: int) -> None:
        self._P = [np.empty(2 * size, np.uint64) for _ in range(2)]  # (P0; P1) pairs, rounds alternate
        self._X = np.zeros(2 * size, np.uint64)  # (x0; x2) in the low halves; the high halves stay zero
        self._views: dict[tuple[int, ...], tuple] = {}
        self._keys: dict[tuple[int, int], tuple] = {}

    def _shaped(self, shape: tuple[int, ...]) -> tuple:
        """Buffers of ``(2,) + shape`` with their views, made once per shape."""
        if shape not in self._views:
            size = shape[0] * shape[1]
            P = [b[: 2 * size].reshape((2,) + shape) for b in self._P]  # (2, *S) uint64
            X = self._X[: 2 * size].reshape((2,) + shape)  # (2, *S) uint64, high halves zero
            # hi(P)[::-1] = (hi P1; hi P0) and lo(P)[::-1] = (x1; x3): the pair feeding (x0; x2)
            hi_r = [_hi(p)[::-1] for p in P]
            lo_r = [_lo(p)[::-1] for p in P]
            M = _M_PAIR.reshape((2,) + (1,) * len(shape))
            self._views[shape] = (P, hi_r, lo_r, X, _lo(X), M)  # _lo(X): where (x0; x2) are written
        return self._views[shape]

    def _round_keys(self, key: tuple[int, int], ndim: int) -> tuple:
        """Round keys as Python ints and as (2, 1, ...) uint64 pairs to fold into the previous
        products (P1 feeds x0, so it takes k0; P0 feeds x2 and takes k1), made once per key."""
        if (key, ndim) not in self._keys:
            ks = round_keys(key, ROUNDS)
            folds = [np.array([k1, k0], dtype=_U64).reshape((2,) + (1,) * ndim) for k0, k1 in ks]
            self._keys[(key, ndim)] = (ks, folds)
        return self._keys[(key, ndim)]

    def words(
        self, n: np.ndarray, kb: np.ndarray, m: int, g: int, key: tuple[int, int],
        out: np.ndarray | None = None, out_xor: int = 0,
    ) -> np.ndarray:
        """Output words of counters (n, kb, m, g), as an array of shape ``(4,) + S``.

        n and kb are uint32 arrays that broadcast against each other, one of them a
        row and the other a column: (1, N) with (KB, 1), or (N, 1) with (1, KB). S is
        their broadcast shape, and word j of Philox is ``result[j]``. With ``out`` (a
        writable uint32 array or view of shape ``(4,) + S``) the words are written
        there and ``out`` is returned. ``out_xor`` (a 32-bit int) is xored into every
        output word on the way out, for free on x0 and x2 (it joins the last round's
        key); ``vera_ref.projection`` passes 2^31 for its float mapping (spec 1.5).
        """
        shape = np.broadcast_shapes(n.shape, kb.shape)
        if out is None:
            out = np.empty((4,) + shape, dtype=_U32)
        P, hi_r, lo_r, X, Xlo, M = self._shaped(shape)
        ks, folds = self._round_keys(key, len(shape))
        x0, x2 = Xlo[0], Xlo[1]  # strided uint32 views of X's low halves
        # round 0: c0 = n (row), c1 = kb (column), c2 = m, c3 = g
        k0, k1 = ks[0]
        r0 = n * _M0  # (1, N) uint64
        s1 = m * M1  # Python int, exact
        c0 = kb ^ _U32(((s1 >> 32) ^ k0) & 0xFFFFFFFF)  # (KB, 1)
        c1 = (s1 & 0xFFFFFFFF)  # scalar
        c2 = _hi(r0) ^ _U32(g ^ k1)  # (1, N)
        c3 = _lo(r0)  # (1, N)
        # round 1: x0 column, x2 row
        k0, k1 = ks[1]
        q0 = c0 * _M0  # (KB, 1) uint64
        q1 = c2 * _M1  # (1, N) uint64
        c0 = _hi(q1) ^ _U32(c1 ^ k0)  # (1, N)
        c1 = _lo(q1)  # (1, N)
        np.bitwise_xor(_hi(q0) ^ _U32(k1), c3, out=x2)  # (KB, N): first full array
        c3 = _lo(q0)  # (KB, 1)
        # round 2: x0 row, x2 full; P1 goes to P[0][1] so round 3 finds x1 = lo(P[0][1])
        k0, k1 = ks[2]
        q0 = c0 * _M0  # (1, N)
        np.multiply(X[1], _M1, out=P[0][1])  # (KB, N) uint64
        np.bitwise_xor(hi_r[0][0], c1 ^ _U32(k0), out=x0)  # (KB, N)
        np.bitwise_xor(_hi(q0) ^ _U32(k1), c3, out=x2)  # row ^ column -> (KB, N)
        c3 = _lo(q0) ^ _U32(ks[3][1])  # (1, N) row, pre-xored with round 3's k1
        P[0][1] ^= _U64(ks[3][0])  # x1 = lo(P[0][1]) takes round 3's k0 (the high half is spent)
        # round 3: both words full; x3 is still a row, folded with its key above
        np.multiply(X, M, out=P[1])  # (2, KB, N)
        np.bitwise_xor(hi_r[1][0], lo_r[0][0], out=x0)
        np.bitwise_xor(hi_r[1][1], c3, out=x2)
        # rounds 4..9: the pair; P buffers alternate so the previous low halves survive
        for i in range(4, ROUNDS):
            cur, prev = i % 2, 1 - i % 2
            np.multiply(X, M, out=P[cur])  # (2, *S) uint64
            last = i == ROUNDS - 1
            fold = folds[i] ^ _U64(out_xor) if last and out_xor else folds[i]
            np.bitwise_xor(P[prev], fold, out=P[prev])  # round i's key into (x1; x3)
            y = out[0::2] if last else Xlo  # (x0; x2)
            np.bitwise_xor(hi_r[cur], lo_r[prev], out=y)
        if out_xor:
            np.bitwise_xor(lo_r[(ROUNDS - 1) % 2], _U32(out_xor), out=out[1::2])  # (x1; x3)
        else:
            np.copyto(out[1::2], lo_r[(ROUNDS - 1) % 2])  # (x1; x3)
        return out
