"""Projection tables A and B from a seed (spec 1.3-1.6 and 2.1-2.3).

Element ``T[m, g][n, k]`` is word ``k mod 4`` of Philox4x32-10 at counter
``(n, k div 4, m, g)`` under key ``(seed mod 2^32, seed div 2^32)``: a pure function
of ``(seed, m, g, n, k)``, so any block can be made alone and a slice of a larger
table equals the smaller table.
"""
from __future__ import annotations

import math

import numpy as np

from .errors import ProjectionError
from .seed import SEED_LIMIT  # noqa: F401  (spec 1.3; the rule's one home is vera_ref.seed)
from .seed import check_seed as seed_rule
from .philox import philox_words
from .philox_blocks import BlockPhilox

MATRIX_A = 0  # spec 1.4: m = 0 for A
MATRIX_B = 1  # spec 1.4: m = 1 for B
WORD_LIMIT = 1 << 32  # spec 1.4: every counter word is a 32-bit integer
RANK_LIMIT = WORD_LIMIT * 4  # spec 1.4: k div 4 must fit one word
CHUNK = 8192  # counters per step of table_words (the plain path)
BLOCK_ELEMS = 1 << 14  # counters per block: ~1.3 MB of buffers stay in a core's L2 (bench/rng.py)
_HALF_GRID = (1 << 24) - 1  # spec 1.5: s = 2*m24 + 1 - 2^24 = 2*m24 - (2^24 - 1)


def key_of_seed(seed: int) -> tuple[int, int]:
    """spec 1.3: key = (seed mod 2^32, seed div 2^32)."""
    check_seed(seed)
    return seed & 0xFFFFFFFF, seed >> 32


def check_seed(seed: int) -> None:
    """spec 1.3 (``ProjectionError`` if out of range); the rule lives in ``vera_ref.seed``."""
    seed_rule(seed)


def _check_count(name: str, value: int, limit: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ProjectionError(f"{name} must be an integer, got {type(value).__name__}")
    if not 1 <= int(value) <= limit:
        raise ProjectionError(f"{name} must be in [1, {limit}], got {value}")


def kaiming_bound(fan_in: int) -> np.float32:
    """spec 1.6: bound = RNE_binary32(sqrt_binary64(6.0 / fan_in)).

    Python's float division and math.sqrt are correctly rounded binary64
    operations; np.float32() of a Python float rounds to nearest even.
    """
    _check_count("fan_in", fan_in, RANK_LIMIT)
    return np.float32(math.sqrt(6.0 / int(fan_in)))


def words_to_float(words: np.ndarray, bound: np.float32) -> np.ndarray:
    """spec 1.5: 32-bit words -> float32 on the odd grid, |value| < bound.

    m24 = u >> 8; s = 2*m24 + 1 - 2^24; value = float32(s) * (float32(bound) * 2^-24),
    one binary32 multiply. ``words`` may be any unsigned dtype holding 32-bit values.
    """
    scale = np.float32(bound) * np.float32(2.0**-24)  # exact: power-of-two scaling
    s = (np.asarray(words).astype(np.int64) >> 8) * 2 - _HALF_GRID  # odd, |s| < 2^24
    return s.astype(np.float32) * scale  # int -> float32 exact; one rounding here


def table_words(
    seed: int, m: int, g: int, rows: tuple[int, int], cols: tuple[int, int]
) -> np.ndarray:
    """Words T[m, g][n, k] for n in [rows), k in [cols): uint32 (n1 - n0, k1 - k0) (spec 1.4)."""
    key = key_of_seed(seed)
    (n0, n1), (k0, k1) = rows, cols
    if not (0 <= n0 <= n1 <= WORD_LIMIT and 0 <= k0 <= k1 <= RANK_LIMIT):
        raise ProjectionError(f"block rows {rows} cols {cols} out of the table's range")
    if m not in (MATRIX_A, MATRIX_B) or not 0 <= g < WORD_LIMIT:
        raise ProjectionError(f"matrix m must be 0 or 1 and group g in [0, 2^32), got {m}, {g}")
    out = np.empty((n1 - n0, k1 - k0), dtype=np.uint32)  # (rows, cols)
    for start in range(n0, n1, CHUNK):
        stop = min(start + CHUNK, n1)
        n = np.arange(start, stop, dtype=np.uint64)  # c0 = feature index
        for kb in range(k0 // 4, (k1 + 3) // 4):  # c1 = k div 4
            words = philox_words(n, kb, m, g, key)
            for j in range(4):
                k = 4 * kb + j
                if k0 <= k < k1:
                    out[start - n0 : stop - n0, k - k0] = words[j]
    return out


SIGN_FLIP = 1 << 31  # words reach _map_words xored with 2^31 (BlockPhilox's out_xor)


def _map_words(V: np.ndarray, scale: np.float32, dest: np.ndarray) -> None:
    """spec 1.5 on a block of words given as ``V = u ^ 2^31`` (uint32), written into ``dest``
    (same shape, float32); ``V`` is overwritten.

    Read as int32, V is u - 2^31, so its arithmetic shift by 7 is (u >> 7) - 2^24, and
    setting bit 0 gives ((u >> 7) | 1) - 2^24 = 2*(u >> 8) + 1 - 2^24 = s, odd with
    |s| < 2^24 (2^24 is even, so bit 0 is the same before and after the offset). The
    int32 -> float32 conversion is exact; the multiply is the one binary32 rounding.
    """
    v = V.view(np.int32)
    np.right_shift(v, np.int32(7), out=v)  # arithmetic shift: int32
    v |= np.int32(1)
    np.copyto(dest, v, casting="unsafe")  # int32 -> float32: exact
    dest *= scale  # the one rounding (a fused cast-multiply call is slower: it casts through a buffer)


class _Workspace:
    """Buffers for blocks of at most BLOCK_ELEMS counters, kept for both tables of a projection
    call. Pages of a buffer are only touched (and faulted in) as far as blocks use them."""

    def __init__(self) -> None:
        self.gen = BlockPhilox(BLOCK_ELEMS)
        self.words = np.empty(4 * BLOCK_ELEMS, dtype=np.uint32)  # one block of words, (KB, 4, N)


def _table_values(seed: int, m: int, g: int, n_count: int, r: int, bound: np.float32,
                  ws: "_Workspace") -> np.ndarray:
    """value(T[m, g][0:n_count, 0:r])^T as a C-contiguous float32 (r, n_count), made in
    blocks (spec 1.4-1.5): A's layout, and B's transpose.

    A block is KB rank groups x N features, about BLOCK_ELEMS counters, so NumPy's
    per-call cost is amortised. Philox writes its four words into a (KB, 4, N) buffer
    that stays in cache: row 4*kb + j of the result is word j of counters (n, kb), so
    every word lands in contiguous memory, and the float mapping reads the buffer and
    writes the output block once (writing the words straight into the output and
    mapping there was no faster: the output is read back from beyond the cache). (Laying B out
    as (n_out, r) instead would interleave the four words of each counter, a strided
    write that cost a third more time than the rounds after it; ``bench/rng.py``.)
    ``ws``: the block buffers, shared by the calls for A and B. One thread: on this
    project's 2-core machine two worker threads were no faster, so the reference stays
    simple.
    """
    key = key_of_seed(seed)
    scale = np.float32(bound) * np.float32(2.0**-24)  # exact: power-of-two scaling
    n_kb = (r + 3) // 4
    N = min(n_count, BLOCK_ELEMS)  # whole rows of features, as many rank groups as fit
    KB = max(1, min(n_kb, BLOCK_ELEMS // N))
    out = np.empty((r, n_count), dtype=np.float32)
    for n0 in range(0, n_count, N):
        n1 = min(n0 + N, n_count)
        nb = n1 - n0
        n = np.arange(n0, n1, dtype=np.uint32)
        for kb0 in range(0, n_kb, KB):
            kb1 = min(kb0 + KB, n_kb)
            kbn = kb1 - kb0
            kbs = np.arange(kb0, kb1, dtype=np.uint32)
            k0, k1 = 4 * kb0, min(4 * kb1, r)  # ranks of this block
            W = ws.words[: 4 * kbn * nb].reshape(kbn, 4, nb)  # row 4*kb + j: word j
            ws.gen.words(n[None, :], kbs[:, None], m, g, key, out=W.transpose(1, 0, 2),
                         out_xor=SIGN_FLIP)  # (4, KB, N), words ^ 2^31
            _map_words(W.reshape(4 * kbn, nb)[: k1 - k0], scale, out[k0:k1, n0:n1])
    return out


def check_arguments(seed: int, r: int, n_in: int, n_out: int, group: int = 0) -> None:
    """spec 1.3-1.4: ``ProjectionError`` unless seed, r, n_in, n_out and group are integers in range
    (what every generator checks before it draws: a backend building A and B elsewhere calls this)."""
    check_seed(seed)
    _check_count("r", r, RANK_LIMIT)
    _check_count("n_in", n_in, WORD_LIMIT)
    _check_count("n_out", n_out, WORD_LIMIT)
    if isinstance(group, bool) or not isinstance(group, (int, np.integer)) or not 0 <= group < WORD_LIMIT:
        raise ProjectionError(f"group must be in [0, 2^32), got {group}")


def projection(seed: int, r: int, n_in: int, n_out: int, group: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The projection pair of group ``group`` (spec 2.1).

    A = value(T[0, g][0:n_in, 0:r])^T, float32 (r, n_in), bound from fan_in = n_in;
    B = value(T[1, g][0:n_out, 0:r]),   float32 (n_out, r), bound from fan_in = r.

    A is C-contiguous; B is Fortran-contiguous (``B.T`` is C-contiguous), the layout it
    is generated in (see ``_table_values``). NumPy, PyTorch and BLAS take either layout
    without a copy; ``np.ascontiguousarray(B)`` gives row-major memory where bytes matter.
    """
    check_arguments(seed, r, n_in, n_out, group)
    ws = _Workspace()  # block buffers, for A then B
    A = _table_values(int(seed), MATRIX_A, int(group), int(n_in), int(r), kaiming_bound(n_in), ws)  # (r, n_in)
    B = _table_values(int(seed), MATRIX_B, int(group), int(n_out), int(r), kaiming_bound(r), ws).T  # (n_out, r)
    return A, B


def slice_for_layer(A: np.ndarray, B: np.ndarray, in_features: int, out_features: int) -> tuple[np.ndarray, np.ndarray]:
    """spec 2.3: a layer uses the leading slice A[:, :in], B[:out, :]."""
    if in_features > A.shape[1] or out_features > B.shape[0]:
        raise ProjectionError(
            f"layer ({out_features} x {in_features}) is larger than the projection "
            f"(n_out={B.shape[0]}, n_in={A.shape[1]})"
        )
    return A[:, :in_features], B[:out_features, :]
