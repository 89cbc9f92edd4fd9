"""Sharper tests for the generator (spec 1.1-1.6, 2.1), written to kill surviving mutants of
vera_ref/philox.py, philox_blocks.py and projection.py (tools/mutate.py, issue 15).

Expected values come from independent sources only: the plain-Python Philox twin checked
against Random123's known answers (tests/core/test_philox.py), and spec 1.5's mapping
written out with integers and ``fractions``.
"""
from fractions import Fraction

import numpy as np
import pytest

from vera_ref.errors import ProjectionError
from vera_ref.philox import philox4x32, philox4x32_scalar, philox_words
from vera_ref.philox_blocks import BlockPhilox
from vera_ref.projection import (CHUNK, RANK_LIMIT, WORD_LIMIT, kaiming_bound, key_of_seed, projection, table_words,
                                 words_to_float)


def value(word: int, fan_in: int) -> float:
    """spec 1.5 by hand: s = 2*(u >> 8) + 1 - 2^24, value = float32(s) * float32(bound * 2^-24)."""
    bound = np.float32(np.sqrt(6.0 / fan_in))
    s = 2 * (word >> 8) + 1 - 2**24
    exact = Fraction(s) * Fraction(float(bound)) / 2**24  # |s| < 2^24: float32(s) is exact; one rounding
    return float(np.float32(float(exact)))


def element(seed: int, m: int, g: int, n: int, k: int) -> int:
    """spec 1.4: word k mod 4 of Philox4x32-10 at counter (n, k div 4, m, g), key (seed mod 2^32, seed div 2^32)."""
    return philox4x32_scalar((n, k // 4, m, g), (seed % 2**32, seed >> 32))[k % 4]


# -- philox4x32 ------------------------------------------------------------------------------------

@pytest.mark.parametrize("rounds", [1, 7, 10, 16])
def test_every_allowed_round_count_matches_the_scalar_twin(rounds):
    c = np.array([[1, 2, 3, 4], [0xFFFFFFFF, 0, 0x80000000, 7]], dtype=np.uint32)
    got = philox4x32(c, np.array([0xDEADBEEF, 5], dtype=np.uint32), rounds)
    assert got.dtype == np.uint32 and got.shape == (2, 4)
    for row, counter in zip(got, c.tolist()):
        assert tuple(int(w) for w in row) == philox4x32_scalar(tuple(counter), (0xDEADBEEF, 5), rounds)


@pytest.mark.parametrize("rounds", [0, 17, -1])
def test_round_counts_outside_1_to_16_are_refused(rounds):
    with pytest.raises(ProjectionError, match=rf"^rounds must be in \[1, 16\], got {rounds}$"):
        philox4x32(np.zeros((1, 4), np.uint32), np.zeros(2, np.uint32), rounds)


def test_key_shape_and_dtype_are_checked():
    with pytest.raises(ProjectionError, match=r"^key must have shape \(2,\), got \(3,\)$"):
        philox4x32(np.zeros((1, 4), np.uint32), np.zeros(3, np.uint32))
    with pytest.raises(ProjectionError, match=r"^counters must have shape \(N, 4\), got \(2, 3\)$"):
        philox4x32(np.zeros((2, 3), np.uint32), np.zeros(2, np.uint32))
    with pytest.raises(ProjectionError, match=r"^counters and key must be uint32, got uint32 and int64$"):
        philox4x32(np.zeros((1, 4), np.uint32), np.zeros(2, np.int64))


def test_philox_words_on_scalar_counters_equals_the_scalar_twin():
    """Counter words given as plain ints (the constant part of spec 1.4's counter)."""
    n = np.array([0, 1, 0xFFFFFFFF], dtype=np.uint64)
    got = philox_words(n, 0xFFFFFFFF, 1, 0xABCDEF01, (0x12345678, 0x9ABCDEF0))
    for i, nv in enumerate(n.tolist()):
        want = philox4x32_scalar((nv, 0xFFFFFFFF, 1, 0xABCDEF01), (0x12345678, 0x9ABCDEF0))
        assert tuple(int(np.broadcast_to(w, n.shape)[i]) for w in got) == want


@pytest.mark.parametrize("m", [0, 1, 7, 0xFFFFFFFF])
def test_block_philox_without_out_returns_the_words(m):
    """Any 32-bit counter word c2 (spec 1.4 uses m = 0, 1; the block path must not rely on it)."""
    gen = BlockPhilox(12)
    n = np.arange(5, 8, dtype=np.uint32)[None, :]  # (1, 3)
    kb = np.arange(0xFFFFFFFE - 3, 0xFFFFFFFE + 1, dtype=np.uint32)[:, None]  # (4, 1)
    words = gen.words(n, kb, m, 77, (3, 0xFFFFFFFF))
    for a in range(4):
        for b in range(3):
            want = philox4x32_scalar((int(n[0, b]), int(kb[a, 0]), m, 77), (3, 0xFFFFFFFF))
            assert tuple(int(np.broadcast_to(w, (4, 3))[a, b]) for w in words) == want


# -- seeds, counts, groups -----------------------------------------------------------------------

@pytest.mark.parametrize("seed,key", [(0, (0, 0)), (2**32 - 1, (2**32 - 1, 0)), (2**32, (0, 1)),
                                      (2**64 - 1, (2**32 - 1, 2**32 - 1)), (0x0123456789ABCDEF, (0x89ABCDEF, 0x01234567))])
def test_key_of_seed(seed, key):
    assert key_of_seed(seed) == key


@pytest.mark.parametrize("seed", [-1, 2**64, True, 1.0])
def test_key_of_seed_and_table_words_refuse_bad_seeds(seed):
    with pytest.raises(ProjectionError, match="^seed must be"):
        key_of_seed(seed)
    with pytest.raises(ProjectionError, match="^seed must be"):
        table_words(seed, 0, 0, (0, 1), (0, 1))


@pytest.mark.parametrize("arg", [3.0, True, np.float32(2), "4"])
def test_counts_must_be_integers(arg):
    with pytest.raises(ProjectionError, match=f"^r must be an integer, got {type(arg).__name__}$"):
        projection(0, arg, 4, 4)
    with pytest.raises(ProjectionError, match=f"^n_in must be an integer, got {type(arg).__name__}$"):
        projection(0, 2, arg, 4)
    with pytest.raises(ProjectionError, match=f"^fan_in must be an integer, got {type(arg).__name__}$"):
        kaiming_bound(arg)


def test_numpy_integer_counts_are_accepted():
    A, B = projection(np.uint64(3), np.int64(2), np.int32(5), np.uint16(3), np.int8(1))
    A2, B2 = projection(3, 2, 5, 3, 1)
    assert np.array_equal(A, A2) and np.array_equal(B, B2)


def test_kaiming_bound_range_is_inclusive():
    """spec 1.6 with fan_in in [1, 2^34] (r <= 4 * 2^32): both ends accepted, one past refused."""
    assert kaiming_bound(1) == np.float32(np.sqrt(6.0))
    assert kaiming_bound(RANK_LIMIT) == np.float32(np.sqrt(6.0 / 2**34))
    for bad in (0, -3, RANK_LIMIT + 1):
        with pytest.raises(ProjectionError, match=rf"^fan_in must be in \[1, {RANK_LIMIT}\], got {bad}$"):
            kaiming_bound(bad)


@pytest.mark.parametrize("group", [-1, 2**32, True])
def test_bad_groups_are_refused(group):
    with pytest.raises(ProjectionError, match=r"^group must be in \[0, 2\^32\), got "):
        projection(0, 2, 3, 3, group)


def test_the_last_group_and_its_values():
    seed, g = 2**64 - 1, 2**32 - 1
    A, B = projection(seed, 5, 3, 2, g)
    for k in range(5):
        for n in range(3):
            assert A[k, n] == value(element(seed, 0, g, n, k), 3)
        for n in range(2):
            assert B[n, k] == value(element(seed, 1, g, n, k), 5)


# -- table_words: the block interface of spec 1.4 ------------------------------------------------

def test_table_words_at_the_edges_of_the_table():
    seed = 0x0123456789ABCDEF
    last_n, last_k = WORD_LIMIT - 1, RANK_LIMIT - 1
    w = table_words(seed, 1, WORD_LIMIT - 1, (last_n - 1, WORD_LIMIT), (last_k - 2, RANK_LIMIT))
    assert w.dtype == np.uint32 and w.shape == (2, 3)
    for i, n in enumerate((last_n - 1, last_n)):
        for j, k in enumerate(range(last_k - 2, RANK_LIMIT)):
            assert int(w[i, j]) == element(seed, 1, WORD_LIMIT - 1, n, k)


@pytest.mark.parametrize("m,g,rows,cols", [
    (0, 0, (0, WORD_LIMIT + 1), (0, 1)),     # one row past the table
    (0, 0, (0, 1), (0, RANK_LIMIT + 1)),     # one rank past
    (0, 0, (3, 2), (0, 1)),                  # reversed rows
    (0, 0, (0, 1), (2, 1)),                  # reversed cols
    (0, 0, (-1, 1), (0, 1)),
    (0, 0, (0, 1), (-1, 1)),
])
def test_table_words_refuses_blocks_outside_the_table(m, g, rows, cols):
    with pytest.raises(ProjectionError, match=r"^block rows .* out of the table's range$"):
        table_words(0, m, g, rows, cols)


@pytest.mark.parametrize("m,g", [(2, 0), (-1, 0), (0, WORD_LIMIT), (0, -1)])
def test_table_words_refuses_bad_matrix_or_group(m, g):
    with pytest.raises(ProjectionError, match=r"^matrix m must be 0 or 1 and group g in \[0, 2\^32\)"):
        table_words(0, m, g, (0, 1), (0, 1))


def test_table_words_across_its_chunk_boundary_and_odd_columns():
    """A block of rows longer than one chunk, starting mid-chunk, columns not aligned to 4."""
    seed, n0, n1, k0, k1 = 99, CHUNK - 3, 2 * CHUNK + 2, 5, 11
    w = table_words(seed, 0, 2, (n0, n1), (k0, k1))
    assert w.shape == (n1 - n0, k1 - k0)
    for n in (n0, CHUNK - 1, CHUNK, 2 * CHUNK - 1, 2 * CHUNK, n1 - 1):
        for k in range(k0, k1):
            assert int(w[n - n0, k - k0]) == element(seed, 0, 2, n, k), (n, k)


def test_empty_blocks():
    assert table_words(0, 0, 0, (5, 5), (0, 3)).shape == (0, 3)
    assert table_words(0, 0, 0, (0, 2), (7, 7)).shape == (2, 0)


# -- the float mapping (spec 1.5) -----------------------------------------------------------------

def test_words_to_float_by_hand():
    words = np.array([0, 0xFF, 0x100, 0x7FFFFFFF, 0x80000000, 0xFFFFFF00, 0xFFFFFFFF], dtype=np.uint32)
    for fan_in in (1, 3, 256, 4096):
        got = words_to_float(words, kaiming_bound(fan_in))
        assert got.dtype == np.float32
        assert [float(v) for v in got] == [value(int(w), fan_in) for w in words]


@pytest.mark.parametrize("r,n_in,n_out", [(1, 1, 1), (5, 7, 3), (9, 4, 20)])
def test_projection_elements_by_hand(r, n_in, n_out):
    """spec 2.1 from spec 1.4-1.6 written out: A[k, n] = value(T[0][n, k]), fan_in n_in; B[n, k]: fan_in r."""
    seed, g = 2**40 + 12345, 3
    A, B = projection(seed, r, n_in, n_out, g)
    assert A.shape == (r, n_in) and B.shape == (n_out, r) and A.dtype == B.dtype == np.float32
    assert [[float(v) for v in row] for row in A] == \
        [[value(element(seed, 0, g, n, k), n_in) for n in range(n_in)] for k in range(r)]
    assert [[float(v) for v in row] for row in B] == \
        [[value(element(seed, 1, g, n, k), r) for k in range(r)] for n in range(n_out)]


def test_projection_larger_than_one_block():
    """Blocks of spec 1.4 in both layouts: rows and ranks past the first block, spot-checked."""
    seed, r, n_in, n_out = 7, 6, 9000, 5000
    A, B = projection(seed, r, n_in, n_out)
    for k, n in [(0, 0), (5, 8191), (3, 8192), (5, 8999), (1, 4100)]:
        assert float(A[k, n]) == value(element(seed, 0, 0, n, k), n_in)
    for n, k in [(0, 0), (4999, 5), (2048, 3), (1365, 4), (1366, 1)]:
        assert float(B[n, k]) == value(element(seed, 1, 0, n, k), r)


def test_block_philox_with_out_writes_and_returns_out():
    gen = BlockPhilox(6)
    n = np.arange(3, dtype=np.uint32)[:, None]  # (3, 1)
    kb = np.arange(2, dtype=np.uint32)[None, :]  # (1, 2)
    bufs = np.zeros((4, 3, 2), dtype=np.uint32)
    assert gen.words(n, kb, 0, 5, (1, 2), out=bufs) is bufs
    for a in range(3):
        for b in range(2):
            assert tuple(int(bufs[j, a, b]) for j in range(4)) == philox4x32_scalar((a, b, 0, 5), (1, 2))


# -- the generator registry (spec 2.5) --------------------------------------------------------------

def test_sharing_modes_per_generator():
    from vera_ref import generators
    generators.get("philox4x32-10").check_sharing("per-module")
    generators.get("stored").check_sharing("shared")
    with pytest.raises(ProjectionError, match=r"^the peft-mt19937 generator supports sharing 'shared' only, "
                                              r"got 'per-module'$"):
        generators.get("peft-mt19937").check_sharing("per-module")
    with pytest.raises(ProjectionError, match=r"^the philox4x32-10 generator supports sharing 'shared' or "
                                              r"'per-module' only, got 'per_module'$"):
        generators.get("philox4x32-10").check_sharing("per_module")


def test_registered_devices_are_returned():
    from vera_ref import generators

    def fake(*args):  # a device implementation for a framework nobody else uses
        return args

    generators.register_device("stored", "mutants-test-framework", fake)
    assert generators.get("stored").device("mutants-test-framework") is fake
    with pytest.raises(ProjectionError, match=r"^no nothing-here implementation of the stored generator"):
        generators.get("stored").device("nothing-here")


def test_layer_slice_bounds_are_inclusive():
    from vera_ref.projection import slice_for_layer
    A, B = projection(3, 4, 10, 12)
    A_l, B_l = slice_for_layer(A, B, 10, 12)  # the whole projection is a valid layer
    assert A_l.shape == (4, 10) and B_l.shape == (12, 4)
    with pytest.raises(ProjectionError, match=r"^layer \(12 x 11\) is larger than the projection"):
        slice_for_layer(A, B, 11, 12)


def test_rank_beyond_one_block_of_b():
    """r > 4 * 8192: B's rank groups span several blocks (spec 1.4 blocks in B's layout)."""
    seed, r = 77, 4 * 8192 + 9
    A, B = projection(seed, r, 1, 2)
    for k in (0, 4 * 8192 - 1, 4 * 8192, 4 * 8192 + 4, r - 1):
        for n in (0, 1):
            assert float(B[n, k]) == value(element(seed, 1, 0, n, k), r), (n, k)
        assert float(A[k, 0]) == value(element(seed, 0, 0, 0, k), 1), k


def test_registry_lookups_and_refusals():
    from vera_ref import generators
    assert generators.names() == ("philox4x32-10", "stored", "peft-mt19937")
    for bad in ("x", 3, None):
        with pytest.raises(ProjectionError, match=r"^generator must be one of philox4x32-10, stored, peft-mt19937, got "):
            generators.get(bad)
    with pytest.raises(ProjectionError, match=r"^generator 'stored' is already registered$"):
        generators.register(generators.get("stored"))
    ph, st_, pf = (generators.get(n) for n in generators.names())
    assert (ph.has_seed, ph.slices, st_.has_seed, st_.slices, pf.has_seed, pf.slices) == \
        (True, True, False, True, True, False)
    assert st_.check_seed(None) is None
    with pytest.raises(ProjectionError, match=r"^the stored generator takes no seed, got 3$"):
        st_.check_seed(3)
    with pytest.raises(ProjectionError, match=r"^the stored generator has no rule to generate from: A and B are stored$"):
        st_.projection(0, 2, 3, 4)
    A, B = ph.projection(9, 2, 3, 4)  # group 0 by default
    A0, B0 = projection(9, 2, 3, 4, 0)
    assert np.array_equal(A, A0) and np.array_equal(B, B0)
    with pytest.raises(ProjectionError, match=r"^group applies to philox4x32-10 only"):
        pf.projection(9, 2, 3, 4, 1)
