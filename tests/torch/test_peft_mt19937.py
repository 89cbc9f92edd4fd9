"""spec 2.5.3: the PEFT-compatible generator is bit-identical to PEFT's torch projections."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from vera_ref.errors import ProjectionError
from vera_ref.peft_mt19937 import peft_projection

torch = pytest.importorskip("torch")


def _torch_projection(key, r, n_in, n_out):
    """PEFT's recipe written against torch directly (peft/tuners/vera/model.py _kaiming_init)."""
    import math
    gen = torch.Generator(device="cpu").manual_seed(key)
    out = []
    for shape, fan in (((r, n_in), n_in), ((n_out, r), r)):
        bound = math.sqrt(3.0) * (math.sqrt(2) / math.sqrt(fan))
        out.append(torch.empty(shape, dtype=torch.float32).uniform_(-bound, bound, generator=gen).numpy())
    return out


@given(key=st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 1, 2**32 - 1, 2**32, 2**63])),
       r=st.integers(1, 40), n_in=st.integers(1, 300), n_out=st.integers(1, 300))
def test_bit_identical_to_torch(key, r, n_in, n_out):
    A, B = peft_projection(key, r, n_in, n_out)
    tA, tB = _torch_projection(key, r, n_in, n_out)
    assert np.array_equal(A.view(np.uint32), tA.view(np.uint32))
    assert np.array_equal(B.view(np.uint32), tB.view(np.uint32))


def test_bit_identical_to_peft_itself():
    pytest.importorskip("peft")
    from peft.tuners.vera.model import _kaiming_init
    for key, r, n_in, n_out in ((0, 256, 768, 768), (7, 3, 1024, 4096)):
        gen = torch.Generator(device="cpu").manual_seed(key)
        tA = _kaiming_init((r, n_in), generator=gen).numpy()
        tB = _kaiming_init((n_out, r), generator=gen).numpy()
        A, B = peft_projection(key, r, n_in, n_out)
        assert np.array_equal(A.view(np.uint32), tA.view(np.uint32))
        assert np.array_equal(B.view(np.uint32), tB.view(np.uint32))


def test_bad_key():
    with pytest.raises(ProjectionError, match=r"^PEFT projection key must be in \[0, 2\^64\), got -3$"):
        peft_projection(-3, 2, 2, 2)
