"""spec 1.3-1.6, 2.1-2.3, 6.3: projections from a seed."""
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


@pytest.mark.parametrize("threads", [1, 2, 3, 7])
@pytest.mark.parametrize("block", [64, 2])
def test_threads_never_change_the_values(threads, block, monkeypatch):
    """Blocks split between worker threads (spec 1.4: each block is a pure function of its counters):
    every block, including the last partial ones, equals the plain per-counter path."""
    P = sys.modules["vera_ref.projection"]  # the module (vera_ref.projection is also the function)
    # 64: A in blocks of 4 rank groups x 16 features, B of 16 features x 4 rank groups; 2: both tables in
    # blocks of 2 counters, so B's ranks span several blocks too and its last one is partial (r = 13)
    monkeypatch.setattr(P, "BLOCK_ELEMS", block)
    seed, r, n_in, n_out = 2**40 + 3, 13, 70, 45
    A, B = P.projection(seed, r, n_in, n_out, 2, threads=threads)
    assert np.array_equal(A, words_to_float(table_words(seed, MATRIX_A, 2, (0, n_in), (0, r)), kaiming_bound(n_in)).T)
    assert np.array_equal(B, words_to_float(table_words(seed, MATRIX_B, 2, (0, n_out), (0, r)), kaiming_bound(r)))


@pytest.mark.parametrize("env, blocks, want", [
    ("", 100, "cpus"), ("1", 100, 1), ("3", 100, 3), ("16", 1000, 4),  # at most MAX_THREADS = 4
    ("4", 7, 1), ("4", 8, 2), ("4", 15, 3), ("2", 3, 1),  # at least MIN_BLOCKS_PER_THREAD = 4 blocks each
    ("0", 100, "cpus"), ("x", 100, "cpus"), ("-2", 100, "cpus"),  # not a positive integer: ignored
])
def test_threads_for(env, blocks, want, monkeypatch):
    import os
    from vera_ref.projection import threads_for
    monkeypatch.setenv("OMP_NUM_THREADS", env)
    if want == "cpus":
        want = max(1, min(os.cpu_count() or 1, 4, blocks // 4))
    assert threads_for(blocks) == want


@pytest.mark.parametrize("threads", [0, -1, True, 1.5, "2"])
def test_threads_must_be_a_positive_integer(threads):
    with pytest.raises(ProjectionError, match=rf"^threads must be a positive integer, got {re.escape(repr(threads))}$"):
        projection(1, 4, 8, 8, threads=threads)


def test_an_error_in_a_worker_thread_reaches_the_caller(monkeypatch):
    import threading
    P = sys.modules["vera_ref.projection"]
    monkeypatch.setattr(P, "BLOCK_ELEMS", 64)  # A (8, 200): 8 blocks, 4 of them in the second thread
    real = P._map_words

    def broken(*a):
        if threading.current_thread() is not threading.main_thread():
            raise MemoryError("in a worker")
        return real(*a)
    monkeypatch.setattr(P, "_map_words", broken)
    before = threading.active_count()
    with pytest.raises(MemoryError, match="^in a worker$"):
        P.projection(1, 8, 200, 8, threads=2)
    monkeypatch.setattr(P, "_map_words", real)
    assert threading.active_count() == before  # the worker was joined


def test_each_block_is_made_once_by_one_thread_with_its_own_buffers(monkeypatch):
    """threads=k starts k - 1 workers (threads=1: none); every block is generated exactly once; each
    worker writes through buffers no other thread touches; the call returns only when all are done."""
    import threading
    import time
    P = sys.modules["vera_ref.projection"]
    monkeypatch.setattr(P, "BLOCK_ELEMS", 64)
    made, users = [], {}
    real_words, real_map = P.BlockPhilox.words, P._map_words

    def words(self, n, kb, m, *a, **k):
        made.append((m, int(n.min()), int(kb.min())))
        users.setdefault((id(self), m), set()).add(threading.get_ident())  # per table: workers run at once
        return real_words(self, n, kb, m, *a, **k)

    def slow_map(*a):
        if threading.current_thread() is not threading.main_thread():
            time.sleep(0.02)  # workers finish last: returning before joining them would show
        return real_map(*a)
    monkeypatch.setattr(P.BlockPhilox, "words", words)
    monkeypatch.setattr(P, "_map_words", slow_map)
    started = []
    real_start = threading.Thread.start
    monkeypatch.setattr(threading.Thread, "start", lambda self: started.append(self) or real_start(self))
    seed, r, n_in, n_out = 11, 8, 200, 100  # A: 2 rank groups x 4 feature blocks of 64; B: 4 blocks of 32 x 2
    for threads, workers in ((1, 0), (3, 2 + 2)):  # 3 threads per table: 2 workers for A, 2 for B
        made.clear(), users.clear(), started.clear()
        A, B = P.projection(seed, r, n_in, n_out, threads=threads)
        assert len(started) == workers
        assert len(made) == len(set(made)) == 8 + 4  # every block once
        assert all(len(t) == 1 for t in users.values())  # no buffers shared between threads
        assert np.array_equal(A, words_to_float(table_words(seed, MATRIX_A, 0, (0, n_in), (0, r)), kaiming_bound(n_in)).T)
        assert np.array_equal(B, words_to_float(table_words(seed, MATRIX_B, 0, (0, n_out), (0, r)), kaiming_bound(r)))
