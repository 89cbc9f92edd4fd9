"""spec 1.3-1.6, 2.1-2.3, 6.3: projections from a seed."""
import hashlib
import json
import math
import re
import sys
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, strategies as st

from conftest import VECTORS
from vera_ref.adapter import sha256_hex
from vera_ref.errors import ProjectionError
from vera_ref.projection import (MATRIX_A, MATRIX_B, kaiming_bound, projection, slice_for_layer, table_words,
                                 words_to_float)

seeds = st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 1, 2**32 - 1, 2**32, 2**64 - 1]))


@given(seed=seeds, r=st.integers(1, 11), n_in=st.integers(1, 40), n_out=st.integers(1, 40), g=st.integers(0, 5))
def test_projection_equals_plain_tables(seed, r, n_in, n_out, g):
    A, B = projection(seed, r, n_in, n_out, g)
    assert A.shape == (r, n_in) and B.shape == (n_out, r) and A.dtype == B.dtype == np.float32
    assert np.array_equal(A, words_to_float(table_words(seed, MATRIX_A, g, (0, n_in), (0, r)), kaiming_bound(n_in)).T)
    assert np.array_equal(B, words_to_float(table_words(seed, MATRIX_B, g, (0, n_out), (0, r)), kaiming_bound(r)))


@given(seed=seeds, data=st.data())
def test_any_block_equals_direct_generation(seed, data):
    """spec 1.4: a block of a larger table equals direct generation of that block."""
    N, K = 37, 13
    m = data.draw(st.integers(0, 1))
    g = data.draw(st.integers(0, 3))
    full = table_words(seed, m, g, (0, N), (0, K))
    n0 = data.draw(st.integers(0, N - 1)); n1 = data.draw(st.integers(n0 + 1, N))
    k0 = data.draw(st.integers(0, K - 1)); k1 = data.draw(st.integers(k0 + 1, K))
    assert np.array_equal(table_words(seed, m, g, (n0, n1), (k0, k1)), full[n0:n1, k0:k1])


@given(seed=seeds, r_small=st.integers(1, 9), extra_r=st.integers(0, 9), n_in=st.integers(1, 30),
       extra_n=st.integers(0, 30), n_out=st.integers(1, 30))
def test_rank_prefixes_and_feature_slices(seed, r_small, extra_r, n_in, extra_n, n_out):
    """spec 1.4: rank prefixes of A (same n_in) and feature prefixes of B (same r) are the smaller projection."""
    A_big, B_big = projection(seed, r_small + extra_r, n_in, n_out + extra_n)
    A_small, B_small = projection(seed, r_small, n_in, n_out)
    assert np.array_equal(A_big[:r_small], A_small)
    # B's bound depends on r, so B's rank prefix holds for the words; its feature prefix for the values
    _, B_same_r = projection(seed, r_small + extra_r, n_in, n_out)
    assert np.array_equal(B_big[:n_out], B_same_r)
    w_big = table_words(seed, MATRIX_B, 0, (0, n_out), (0, r_small + extra_r))
    assert np.array_equal(w_big[:, :r_small], table_words(seed, MATRIX_B, 0, (0, n_out), (0, r_small)))


def _exact_value(word: int, bound: np.float32) -> np.float32:
    """spec 1.5 computed exactly with rationals, then one rounding to binary32."""
    s = 2 * (word >> 8) + 1 - 2**24
    exact = Fraction(s) * Fraction(float(bound)) / 2**24
    f = float(exact)  # exact: s has 25 bits, bound 24, so the product fits binary64
    assert Fraction(f) == exact
    return np.float32(f)


@given(seed=seeds, r=st.integers(1, 9), n=st.integers(1, 50))
def test_values_on_the_odd_grid_inside_the_bound(seed, r, n):
    A, _ = projection(seed, r, n, 1)
    bound = kaiming_bound(n)
    words = table_words(seed, MATRIX_A, 0, (0, n), (0, r)).T  # (r, n) like A
    assert np.all(np.abs(A) < bound) and np.all(A != 0)
    for w, v in zip(words.ravel()[:40], A.ravel()[:40]):
        assert _exact_value(int(w), bound) == v


def test_extreme_words_stay_inside_the_bound():
    for fan_in in (1, 3, 6, 24, 768, 4096, 65536, 2**31):
        b = kaiming_bound(fan_in)
        v = words_to_float(np.array([0, 255, 2**32 - 1, 2**31, 2**31 - 256], dtype=np.uint32), b)
        assert np.all(np.abs(v) < b) and np.all(v != 0)
        assert v[0] == -v[2]  # s = -(2^24 - 1) and +(2^24 - 1)


def test_kaiming_bound_is_rounded_binary64_sqrt():
    for fan_in in (1, 7, 256, 768, 1024, 4096):
        assert kaiming_bound(fan_in) == np.float32(math.sqrt(6.0 / fan_in))
    assert kaiming_bound(6) == np.float32(1.0)


def test_projection_vectors():
    env = json.loads((VECTORS / "projections.json").read_text())
    cases = env["testGroups"][0]["tests"]
    assert {c["r"] for c in cases} >= {1, 7} and max(c["n_in"] for c in cases) >= 65536
    assert {c["seed"] for c in cases} >= {"0", str(2**64 - 1)} and max(c["group"] for c in cases) > 0
    for c in cases:
        A, B = projection(int(c["seed"]), c["r"], c["n_in"], c["n_out"], c["group"])
        assert sha256_hex(A) == c["sha256_A"] and sha256_hex(B) == c["sha256_B"]
        assert f"{int(kaiming_bound(c['n_in']).view(np.uint32)):08x}" == c["bound_A_bits"]
        for s in c["samples"]:
            M = A if s["matrix"] == "A" else B
            assert f"{int(M[s['row'], s['col']].view(np.uint32)):08x}" == s["bits"]
            m = 0 if s["matrix"] == "A" else 1
            word = table_words(int(c["seed"]), m, c["group"], (s["n"], s["n"] + 1), (s["k"], s["k"] + 1))
            assert f"{int(word[0, 0]):08x}" == s["word"]


@pytest.mark.parametrize("args,message", [
    ((-1, 4, 8, 8), r"seed must be in \[0, 2\^64\), got -1"),
    ((2**64, 4, 8, 8), r"seed must be in \[0, 2\^64\), got 18446744073709551616"),
    ((0, 0, 8, 8), r"r must be in \[1, 17179869184\], got 0"),
    ((0, 4, 0, 8), r"n_in must be in \[1, 4294967296\], got 0"),
    ((0, 4, 8, 2**32 + 1), r"n_out must be in \[1, 4294967296\], got 4294967297"),
    ((1.5, 4, 8, 8), r"seed must be an integer, got float"),
])
def test_bad_arguments_are_named(args, message):
    with pytest.raises(ProjectionError, match="^" + message + "$"):
        projection(*args)


def test_layer_slice():
    A, B = projection(3, 4, 10, 12)
    A_l, B_l = slice_for_layer(A, B, 6, 5)
    assert A_l.shape == (4, 6) and B_l.shape == (5, 4)
    with pytest.raises(ProjectionError, match=r"^layer \(13 x 6\) is larger than the projection"):
        slice_for_layer(A, B, 6, 13)


@pytest.mark.parametrize("block", [140, 64, 2])
def test_blocks_never_change_the_values(block, monkeypatch):
    """spec 1.4: each block is a pure function of its counters: every block, including the last
    partial ones, equals the plain per-counter path."""
    P = sys.modules["vera_ref.projection"]  # the module (vera_ref.projection is also the function)
    # 140: whole rows of features; A's blocks of rank groups {0, 1} and {2, 3} (r = 13: the last one
    # partial), B's (its transpose's) {0, 1, 2} and {3}; 64: blocks of 64 features, never whole rows
    # (the output blocks are strided); 2: blocks of 2 counters
    monkeypatch.setattr(P, "BLOCK_ELEMS", block)
    seed, r, n_in, n_out = 2**40 + 3, 13, 70, 45
    A, B = P.projection(seed, r, n_in, n_out, 2)
    assert np.array_equal(A, words_to_float(table_words(seed, MATRIX_A, 2, (0, n_in), (0, r)), kaiming_bound(n_in)).T)
    assert np.array_equal(B, words_to_float(table_words(seed, MATRIX_B, 2, (0, n_out), (0, r)), kaiming_bound(r)))


def test_each_block_is_made_once(monkeypatch):
    P = sys.modules["vera_ref.projection"]
    monkeypatch.setattr(P, "BLOCK_ELEMS", 64)
    made = []
    real_words = P.BlockPhilox.words

    def words(self, n, kb, m, *a, **k):
        made.append((m, int(n.min()), int(kb.min())))
        return real_words(self, n, kb, m, *a, **k)
    monkeypatch.setattr(P.BlockPhilox, "words", words)
    P.projection(11, 8, 200, 100)  # A: 2 rank groups x 4 feature blocks of 64; B^T: 2 x 2 blocks of 64
    assert len(made) == len(set(made)) == 8 + 4


def test_tables_come_in_the_layout_they_are_made_in():
    """A (r, n_in) is C-contiguous; B (n_out, r) is Fortran-contiguous, the transpose of the
    rank-major table it is generated as (projection's docstring); both hash by C-order bytes."""
    A, B = projection(3, 12, 40, 30)
    assert A.flags.c_contiguous and B.T.flags.c_contiguous and B.shape == (30, 12)
    assert sha256_hex(B) == hashlib.sha256(np.ascontiguousarray(B).tobytes()).hexdigest()


def test_map_words_equals_spec_1_5_on_edge_words():
    """_map_words takes u ^ 2^31 and must give words_to_float(u) bit for bit, both ends of the range
    and where bits 7 and 8 change included."""
    P = sys.modules["vera_ref.projection"]
    u = np.array([0, 1, 127, 128, 255, 256, 2**31 - 1, 2**31, 2**31 + 255, 2**31 + 256, 2**32 - 257,
                  2**32 - 256, 2**32 - 1], dtype=np.uint32)
    bound = kaiming_bound(768)
    want = words_to_float(u, bound)
    got = np.empty(u.shape, np.float32)
    P._map_words(u ^ np.uint32(P.SIGN_FLIP), bound * np.float32(2.0**-24), got)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    assert got[0] == -bound * np.float32(1 - 2.0**-24) and got[-1] == bound * np.float32(1 - 2.0**-24)
