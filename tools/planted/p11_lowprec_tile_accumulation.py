"""float16/bfloat16 matmuls accumulate K-tiles of 32 in float32 but add the tiles' partial sums in
the dtype itself (a split-K kernel with low-precision partials).

Every sum of a product then loses about log2(K/32) roundings of the dtype; with products of random
sign the error mostly cancels, with products of one sign (nonnegative activations) it grows with
K. Spec 5.2.3: the tolerance assumes sums accumulated in binary32 or wider (the informative
low-precision path of 3.8).
"""
from _plant import reference_impl, torch_impl  # noqa: F401

CLAUSE = "5.2.3"
AREA = "numerics"
EXPECT = "caught"


EDITS = [("layer.py",
          "        return self.cast(a.astype(np.float32) @ b.astype(np.float32))\n",
          "        if self.dtype == \"float32\" or a.shape[-1] <= 32:\n"
          "            return self.cast(a.astype(np.float32) @ b.astype(np.float32))\n"
          "        acc = None\n"
          "        for k0 in range(0, a.shape[-1], 32):  # planted: partials added in the dtype\n"
          "            part = self.cast(a[..., k0:k0 + 32].astype(np.float32) @ b[k0:k0 + 32].astype(np.float32))\n"
          "            acc = part if acc is None else self.cast(acc.astype(np.float32) + part.astype(np.float32))\n"
          "        return acc\n")]


def make():
    return reference_impl(lib=EDITS, name="planted: low-precision partial sums")
