"""spec 1.1-1.2: Philox4x32-10 against Random123 and against a scalar twin."""
import json

import numpy as np
import pytest
from hypothesis import given, strategies as st

from conftest import ROOT, VECTORS
from vera_ref.errors import ProjectionError
from vera_ref.philox import W0, W1, philox4x32, philox4x32_scalar, philox_words
from vera_ref.philox_blocks import BlockPhilox

u32 = st.integers(0, 2**32 - 1)
# words near the wrap-around so that k + i*W (mod 2^32) carries, and all-ones counters
edge_u32 = st.one_of(u32, st.sampled_from([0, 1, 2**31, 2**32 - 1, (2**32 - W0) % 2**32, (2**32 - W1) % 2**32,
                                            (2**32 - 3 * W0) % 2**32]))


def _kat_lines():
    out = []
    for name in ("kat_vectors", "old_kat_vectors"):
        for line in (VECTORS / "random123" / name).read_text().splitlines():
            p = line.split()
            if len(p) == 12 and p[:2] == ["philox4x32", "10"]:
                out.append((name, [int(w, 16) for w in p[2:6]], [int(w, 16) for w in p[6:8]],
                            [int(w, 16) for w in p[8:12]]))
    return out


def test_random123_files_hold_3_plus_52_philox4x32_10_vectors():
    lines = _kat_lines()
    assert sum(n == "kat_vectors" for n, *_ in lines) == 3
    assert sum(n == "old_kat_vectors" for n, *_ in lines) == 52


def test_random123_copies_are_verbatim():
    shared = ROOT.parent / "shared" / "random123"
    if not shared.exists():
        pytest.skip("../shared/random123 is not beside this checkout")
    for name in ("kat_vectors", "old_kat_vectors"):
        assert (VECTORS / "random123" / name).read_bytes() == (shared / name).read_bytes()


@pytest.mark.parametrize("name,counter,key,expected", _kat_lines(), ids=lambda v: None)
def test_known_answer_vectors(name, counter, key, expected):
    got = philox4x32(np.array([counter], dtype=np.uint32), np.array(key, dtype=np.uint32))
    assert got[0].tolist() == expected
    assert list(philox4x32_scalar(tuple(counter), tuple(key))) == expected


def test_vector_file_matches_random123_lines():
    env = json.loads((VECTORS / "philox4x32_10.json").read_text())
    tests = [t for g in env["testGroups"] for t in g["tests"]]
    assert env["numberOfTests"] == len(tests) == 55
    for t, (_, counter, key, expected) in zip(tests, _kat_lines()):
        assert [int(w, 16) for w in t["counter"]] == counter
        assert [int(w, 16) for w in t["key"]] == key
        assert [int(w, 16) for w in t["expected"]] == expected


@given(st.lists(st.tuples(edge_u32, edge_u32, edge_u32, edge_u32), min_size=1, max_size=20), edge_u32, edge_u32)
def test_vectorised_equals_scalar(counters, k0, k1):
    got = philox4x32(np.array(counters, dtype=np.uint32), np.array([k0, k1], dtype=np.uint32))
    for row, c in zip(got, counters):
        assert tuple(int(w) for w in row) == philox4x32_scalar(c, (k0, k1))


@given(n0=st.integers(0, 2**32 - 40), nlen=st.integers(1, 33), kb0=st.integers(0, 2**32 - 10),
       kblen=st.integers(1, 7), m=st.integers(0, 1), g=u32, k0=edge_u32, k1=edge_u32)
def test_block_path_equals_plain_path(n0, nlen, kb0, kblen, m, g, k0, k1):
    """philox_blocks only reorders the work of philox_words (spec 1.4 layout)."""
    n = np.arange(n0, n0 + nlen, dtype=np.uint64)
    kb = np.arange(kb0, kb0 + kblen, dtype=np.uint64)
    got = BlockPhilox(kblen * nlen).words(n.astype(np.uint32)[None, :], kb.astype(np.uint32)[:, None], m, g, (k0, k1))
    nn, kk = np.meshgrid(n, kb)  # (KB, N)
    want = philox_words(nn.ravel(), kk.ravel(), m, g, (k0, k1))
    for j in range(4):
        assert np.array_equal(np.asarray(got[j]).ravel(), np.broadcast_to(want[j], nn.size).astype(np.uint32))


def test_bad_arguments_are_named():
    with pytest.raises(ProjectionError, match=r"^counters must have shape \(N, 4\), got \(3,\)$"):
        philox4x32(np.zeros(3, np.uint32), np.zeros(2, np.uint32))
    with pytest.raises(ProjectionError, match=r"^counters and key must be uint32, got int64 and uint32$"):
        philox4x32(np.zeros((1, 4), np.int64), np.zeros(2, np.uint32))


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_block_path_xors_out_xor_into_every_word(out_xor, k0, k1):
    """BlockPhilox.words(out_xor=c) is words() ^ c on all four words (x0 and x2 take c with the
    last round's key, x1 and x3 on the copy out)."""
    gen = BlockPhilox(12)
    n, kb = np.arange(3, dtype=np.uint32)[None, :] + 5, np.arange(4, dtype=np.uint32)[:, None]
    plain = gen.words(n, kb, 1, 7, (k0, k1)).copy()
    assert np.array_equal(gen.words(n, kb, 1, 7, (k0, k1), out_xor=out_xor), plain ^ np.uint32(out_xor))
