"""Philox4x32-10 projections with torch integer ops, bit-identical to ``vera_ref`` (spec 1-2).

Values are held in int64 tensors below 2^32. A 32x32-bit product can exceed 2^63,
so ``mulhilo`` splits one factor into 16-bit halves and never overflows int64:

    a = a_hi * 2^16 + a_lo;  X = a_hi * M (< 2^48);  Y = a_lo * M + (X mod 2^16) * 2^16 (< 2^49)
    a * M = Y + (X div 2^16) * 2^32  ->  lo = Y mod 2^32,  hi = Y div 2^32 + X div 2^16

The float mapping is spec 1.5: an exact int -> float32 conversion and one float32
multiply by a float32 scale, the same on CPU and CUDA.
"""
from __future__ import annotations

import numpy as np
import torch

from vera_ref import generators
from vera_ref.errors import ProjectionError
from vera_ref.philox import M0, M1, ROUNDS, round_keys
from vera_ref.projection import MATRIX_A, MATRIX_B, RANK_LIMIT, WORD_LIMIT, kaiming_bound, key_of_seed

MASK32 = 0xFFFFFFFF
BLOCK = 1 << 20  # counters per step: bounds the int64 temporaries to a few MB


def mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of a * m for int64 ``a`` < 2^32 and int ``m`` < 2^32."""
    x = (a >> 16) * m
    y = (a & 0xFFFF) * m + ((x & 0xFFFF) << 16)
    return (y >> 32) + (x >> 16), y & MASK32


def philox_words(c0, c1, c2, c3, key: tuple[int, int]):
    """spec 1.2 on int64 tensors (or ints) that broadcast; returns four int64 tensors."""
    for k0, k1 in round_keys(key, ROUNDS):
        hi0, lo0 = mulhilo(c0, M0) if torch.is_tensor(c0) else divmod(M0 * c0, 1 << 32)
        hi1, lo1 = mulhilo(c2, M1) if torch.is_tensor(c2) else divmod(M1 * c2, 1 << 32)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def _values(words: torch.Tensor, bound: np.float32) -> torch.Tensor:
    """spec 1.5: s = 2*(u >> 8) + 1 - 2^24, then float32(s) * float32(bound * 2^-24)."""
    scale = torch.tensor(np.float32(bound) * np.float32(2.0**-24), dtype=torch.float32, device=words.device)
    s = ((words >> 8) << 1) + (1 - (1 << 24))  # odd, |s| < 2^24
    return s.to(torch.float32) * scale


def _table(seed: int, m: int, g: int, n_count: int, r: int, bound: np.float32, device, rank_major: bool):
    """value(T[m, g][0:n_count, 0:r]): (r, n_count) if rank_major else (n_count, r), float32."""
    key = key_of_seed(seed)
    n_kb = (r + 3) // 4
    kb = torch.arange(n_kb, dtype=torch.int64, device=device)
    step = max(1, BLOCK // n_kb)
    parts = []
    for n0 in range(0, n_count, step):
        n = torch.arange(n0, min(n0 + step, n_count), dtype=torch.int64, device=device)
        if rank_major:  # (n_kb, N): row kb, column n
            w = philox_words(n[None, :], kb[:, None], m, g, key)
            vals = _values(torch.stack(w, dim=1), bound)  # (n_kb, 4, N)
            parts.append(vals.reshape(4 * n_kb, -1)[:r])  # (r, N)
        else:  # (N, n_kb)
            w = philox_words(n[:, None], kb[None, :], m, g, key)
            vals = _values(torch.stack(w, dim=2), bound)  # (N, n_kb, 4)
            parts.append(vals.reshape(-1, 4 * n_kb)[:, :r])  # (N, r)
    return torch.cat(parts, dim=1 if rank_major else 0).contiguous()


def _count(name: str, value: object, limit: int) -> int:
    """spec 1.4: counts the counter words can address (the reference's messages)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ProjectionError(f"{name} must be an integer, got {type(value).__name__}")
    if not 1 <= int(value) <= limit:
        raise ProjectionError(f"{name} must be in [1, {limit}], got {value}")
    return int(value)


def projection(seed: int, r: int, n_in: int, n_out: int, group: int = 0,
               device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """spec 2.1 on ``device``: A float32 (r, n_in), B float32 (n_out, r); equals vera_ref.projection.

    Registered as the ``torch`` implementation of ``philox4x32-10`` in ``vera_ref.generators``."""
    seed = generators.PHILOX.check_seed(seed)
    r, n_in, n_out = _count("r", r, RANK_LIMIT), _count("n_in", n_in, WORD_LIMIT), _count("n_out", n_out, WORD_LIMIT)
    if isinstance(group, bool) or not isinstance(group, (int, np.integer)) or not 0 <= int(group) < WORD_LIMIT:
        raise ProjectionError(f"group must be in [0, 2^32), got {group}")  # the reference's message
    A = _table(seed, MATRIX_A, int(group), n_in, r, kaiming_bound(n_in), device, True)  # (r, n_in)
    B = _table(seed, MATRIX_B, int(group), n_out, r, kaiming_bound(r), device, False)  # (n_out, r)
    return A, B


generators.register_device(generators.PHILOX.name, "torch", projection)
