"""The PEFT-compatible generator ``peft-mt19937`` (spec 2.5.3).

PEFT (``peft.tuners.vera``) draws its projections with
``torch.Generator("cpu").manual_seed(key)`` and Kaiming-uniform init, A first then B
from one stream. This module rebuilds the same float32 bits with NumPy alone:

* torch's CPU generator is MT19937 seeded by ``init_genrand(key mod 2^32)``
  (Matsumoto & Nishimura 1998, the 2002 initialisation), one 32-bit draw per element;
* torch's ``uniform_`` on float32 computes, in float64,
  ``x = (raw & 0xFFFFFF) * 2^-24`` then ``x * (hi - lo) + lo`` with ``hi``/``lo`` the
  float32 bounds, and rounds the result to float32;
* PEFT's bound is ``sqrt(3) * (sqrt(2) / sqrt(fan_in))`` in float64.

A test checks every bit against torch itself.
"""
from __future__ import annotations

import math

import numpy as np

from .errors import ProjectionError

MT_N = 624  # MT19937 state words (Matsumoto & Nishimura 1998)
MT_INIT_MULT = 1812433253  # init_genrand multiplier (mt19937ar.c, 2002)
KEY_LIMIT = 1 << 64  # torch.Generator.manual_seed accepts a 64-bit seed


def _init_genrand(seed32: int) -> np.ndarray:
    """mt19937ar.c init_genrand: the 624-word state for a 32-bit seed."""
    state = np.empty(MT_N, dtype=np.uint32)
    x = seed32 & 0xFFFFFFFF
    state[0] = x
    for i in range(1, MT_N):
        x = (MT_INIT_MULT * (x ^ (x >> 30)) + i) & 0xFFFFFFFF
        state[i] = x
    return state


def mt19937_stream(key: int) -> np.random.MT19937:
    """A NumPy MT19937 in the state torch's CPU generator has after manual_seed(key)."""
    if isinstance(key, bool) or not isinstance(key, (int, np.integer)) or not 0 <= key < KEY_LIMIT:
        raise ProjectionError(f"PEFT projection key must be in [0, 2^64), got {key}")
    bitgen = np.random.MT19937()
    # torch keeps only the low 32 bits of the seed for MT19937's state
    bitgen.state = {"bit_generator": "MT19937", "state": {"key": _init_genrand(int(key)), "pos": MT_N}}
    return bitgen


def peft_bound(fan_in: int) -> float:
    """PEFT's ``_kaiming_init`` bound, in float64, exactly as PEFT computes it."""
    gain = math.sqrt(2)
    std = gain / math.sqrt(fan_in)
    return math.sqrt(3.0) * std


def _uniform(bitgen: np.random.MT19937, shape: tuple[int, int], fan_in: int) -> np.ndarray:
    bound = np.float32(peft_bound(fan_in))  # torch stores the bounds as float32
    lo, hi = np.float64(-bound), np.float64(bound)
    raw = bitgen.random_raw(shape[0] * shape[1]).astype(np.uint64)  # one 32-bit draw each
    x = (raw & np.uint64(0xFFFFFF)).astype(np.float64) * 2.0**-24
    return (x * (hi - lo) + lo).astype(np.float32).reshape(shape)


def peft_projection(key: int, r: int, n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """PEFT's vera_A (r, n_in) and vera_B (n_out, r), float32, for projection_prng_key ``key``."""
    for name, v in (("r", r), ("n_in", n_in), ("n_out", n_out)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ProjectionError(f"{name} must be a positive integer, got {v}")
    bitgen = mt19937_stream(key)
    A = _uniform(bitgen, (r, n_in), fan_in=n_in)  # (r, n_in)
    B = _uniform(bitgen, (n_out, r), fan_in=r)  # (n_out, r)
    return A, B
