"""The Philox key is built as (seed div 2^32, seed mod 2^32): high and low words swapped.

Spec 1.3: key = (seed mod 2^32, seed div 2^32). Seeds below 2^32 then give a key (0, seed).
"""
from _plant import reference_impl, torch_impl  # noqa: F401

CLAUSE = "1.3"
AREA = "generator"
EXPECT = "caught"


def make():
    return reference_impl(lib=[("projection.py", "    return seed & 0xFFFFFFFF, seed >> 32\n",
                                "    return seed >> 32, seed & 0xFFFFFFFF\n")],
                          name="planted: Philox key words swapped")
