"""The generator's feature counter wraps at 4096 (a 12-bit field): rows of A's table past feature
4095 repeat the first ones (and so do rows of B past 4095).

Spec 1.4: the counter is (n, k div 4, m, g) with n the full feature index (a 32-bit word).
Visible only when n_in or n_out > 4096.
"""
from _plant import reference_impl, torch_impl  # noqa: F401

CLAUSE = "1.4"
AREA = "size"
EXPECT = "caught"


def make():
    return reference_impl(lib=[("projection.py", "        n = np.arange(n0, n1, dtype=np.uint32)\n",
                                "        n = np.arange(n0, n1, dtype=np.uint32) % np.uint32(4096)\n")],
                          name="planted: feature counter wraps at 4096")
