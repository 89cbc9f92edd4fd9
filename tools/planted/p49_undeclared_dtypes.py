"""A wrapper that declares no dtypes (so float32 only, the protocol's default) around a layer whose
float16/bfloat16 matmuls add their K-tiles' partial sums in the dtype (p11's bug).

This is the third-party case of issue 24: the wrapper's author never thought about dtypes, and the
layer runs in bfloat16 in production. Spec 5.2.3 (sums accumulated in binary32 or wider); the kit
has to try the dtypes the framework offers instead of trusting the declaration.
"""
from _plant import reference_impl

import p11_lowprec_tile_accumulation as p11

CLAUSE = "5.2.3"
AREA = "numerics"
EXPECT = "caught"


def make():
    impl = reference_impl(lib=p11.EDITS,
                          impl=[('    dtypes = frozenset({"float32", "float16", "bfloat16", "float64"})\n', "")],
                          name="planted: low-precision partial sums, no dtypes declared")
    return impl
