"""The seed is held in a signed 64-bit integer (a torch.int64 tensor, a C ``long``): seeds of 2^63
and above wrap to negative values, and the key's high word is built from the wrapped value.

Spec 1.3: the seed is an integer in [0, 2^64); key = (seed mod 2^32, seed div 2^32).
Visible only for seeds >= 2^63.
"""
from _plant import reference_impl

CLAUSE = "1.3"
AREA = "generator"
EXPECT = "caught"


def make():
    return reference_impl(lib=[("projection.py", "    return seed & 0xFFFFFFFF, seed >> 32\n",
                                "    s = seed - (1 << 64) if seed >= 1 << 63 else seed  # planted: int64 storage\n"
                                "    return s & 0xFFFFFFFF, (s >> 32) & 0x7FFFFFFF\n")],
                          name="planted: seed held as int64")
