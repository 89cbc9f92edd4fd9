"""Philox4x32-10 over a block of the projection table, fast (spec 1.2, 1.4).

The counters of table ``T[m, g]`` are ``(n, kb, m, g)``: over a block of ``KB``
rank groups and ``N`` features the counter varies only in a row (``n``) and a
column (``kb``). Rounds 0-1 therefore work on a ``(1, N)`` row and a ``(KB, 1)``
column, and full ``(KB, N)`` arrays appear from round 1 on. Results are the words of
``philox.philox_words`` bit for bit (tested); this file only reorders the work.

High and low halves of each uint64 product are read as strided uint32 views, so
splitting them costs nothing.
"""
from __future__ import annotations

import numpy as np

from .philox import M0, M1, ROUNDS, round_keys

_U32 = np.uint32
_M0 = np.uint64(M0)
_M1 = np.uint64(M1)


def _hi(p: np.ndarray) -> np.ndarray:
    return p.view(_U32)[..., 1::2]  # little-endian: high word second


def _lo(p: np.ndarray) -> np.ndarray:
    return p.view(_U32)[..., 0::2]


class BlockPhilox:
    """Reusable buffers for blocks of at most ``size`` counters."""

    def __init__(self, size: int) -> None:
        self._p = [np.empty(size, np.uint64) for _ in range(4)]  # two (P0, P1) pairs
        self._x0 = np.empty(size, _U32)
        self._x2 = np.empty(size, _U32)
        self._views: dict[tuple[int, ...], tuple] = {}

    def _shaped(self, shape: tuple[int, ...]) -> tuple:
        """Buffers of ``shape`` with their hi/lo views, made once per shape."""
        if shape not in self._views:
            size = shape[0] * shape[1]
            p = [b[:size].reshape(shape) for b in self._p]
            self._views[shape] = (p, [_hi(b) for b in p], [_lo(b) for b in p],
                                  self._x0[:size].reshape(shape), self._x2[:size].reshape(shape))
        return self._views[shape]

    def words(
        self, n: np.ndarray, kb: np.ndarray, m: int, g: int, key: tuple[int, int],
        out: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Output words of counters (n, kb, m, g).

        n and kb are uint32 arrays that broadcast against each other, one of them a
        row and the other a column: (1, N) with (KB, 1), or (N, 1) with (1, KB). The
        words have the broadcast shape S. With ``out`` (four writable uint32 views of
        shape S) they are written there; otherwise returned as arrays or views valid
        until the next call.
        """
        p, hi, lo, x0, x2 = self._shaped(np.broadcast_shapes(n.shape, kb.shape))
        ks = round_keys(key, ROUNDS)
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
        # round 2: x0 row, x2 full
        k0, k1 = ks[2]
        q0 = c0 * _M0  # (1, N)
        np.multiply(x2, _M1, out=p[1])  # (KB, N)
        np.bitwise_xor(hi[1], c1 ^ _U32(k0), out=x0)  # (KB, N)
        c1 = lo[1]
        np.bitwise_xor(_hi(q0) ^ _U32(k1), c3, out=x2)  # row ^ column -> (KB, N)
        c3 = _lo(q0) ^ _U32(ks[3][1])  # (1, N) row, pre-xored with round 3's k1
        # round 3: x3 is a row, folded with its key above
        k0, _ = ks[3]
        np.multiply(x0, _M0, out=p[2])
        np.multiply(x2, _M1, out=p[3])
        np.bitwise_xor(hi[3], c1, out=x0)
        x0 ^= _U32(k0)
        np.bitwise_xor(hi[2], c3, out=x2)
        c1, c3 = lo[3], lo[2]
        # rounds 4..9: general; buffers alternate so the previous low halves survive
        for i in range(4, ROUNDS):
            k0, k1 = ks[i]
            j0, j1 = 2 * (i % 2), 2 * (i % 2) + 1  # this round's (P0, P1) buffers
            np.multiply(x0, _M0, out=p[j0])
            np.multiply(x2, _M1, out=p[j1])
            last = out is not None and i == ROUNDS - 1
            y0, y2 = (out[0], out[2]) if last else (x0, x2)
            np.bitwise_xor(hi[j1], c1, out=y0)
            y0 ^= _U32(k0)
            np.bitwise_xor(hi[j0], c3, out=y2)
            y2 ^= _U32(k1)
            c1, c3 = lo[j1], lo[j0]
        if out is None:
            return x0, c1, x2, c3
        np.copyto(out[1], c1)
        np.copyto(out[3], c3)
        return out
