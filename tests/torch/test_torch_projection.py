"""vera_torch projections are bit-identical to vera_ref (spec 1-2), on CPU and CUDA."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

torch = pytest.importorskip("torch")
import vera_ref  # noqa: E402
from vera_torch.philox import mulhilo, projection  # noqa: E402


@given(a=st.lists(st.sampled_from([0, 1, 0xFFFF, 0x10000, 0xFFFFFFFF, 0x80000000]) | st.integers(0, 2**32 - 1),
                  min_size=1, max_size=50),
       m=st.sampled_from([0xD2511F53, 0xCD9E8D57, 0xFFFFFFFF, 1]))
def test_mulhilo_never_overflows(a, m):
    hi, lo = mulhilo(torch.tensor(a, dtype=torch.int64), m)
    for x, h, l in zip(a, hi.tolist(), lo.tolist()):
        assert (h, l) == divmod(x * m, 1 << 32)


@given(seed=st.integers(0, 2**64 - 1), r=st.integers(1, 13), n_in=st.integers(1, 70), n_out=st.integers(1, 70),
       group=st.integers(0, 4))
def test_bit_identical_to_reference_on_cpu(seed, r, n_in, n_out, group):
    A, B = projection(seed, r, n_in, n_out, group)
    a, b = vera_ref.projection(seed, r, n_in, n_out, group)
    assert A.dtype == torch.float32 and np.array_equal(A.numpy(), a) and np.array_equal(B.numpy(), b)


def test_large_and_block_boundaries():
    import vera_torch.philox as P
    old = P.BLOCK
    try:
        P.BLOCK = 1000  # force many blocks
        for args in ((3, 9, 4099, 2501, 0), (0, 256, 768, 768, 0)):
            A, B = projection(*args)
            a, b = vera_ref.projection(*args)
            assert np.array_equal(A.numpy(), a) and np.array_equal(B.numpy(), b)
    finally:
        P.BLOCK = old


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_bit_identical_on_cuda():
    for args in ((0, 256, 4096, 4096, 0), (2**64 - 1, 7, 70000, 33, 3)):
        A, B = projection(*args, device="cuda")
        a, b = vera_ref.projection(*args)
        assert A.device.type == "cuda"
        assert np.array_equal(A.cpu().numpy(), a) and np.array_equal(B.cpu().numpy(), b)
