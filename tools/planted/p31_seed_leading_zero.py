"""The reader accepts a seed with leading zeros ("007"), as ``int()`` does.

Spec 4.3: a decimal string without sign or leading zero; 4.6 step 14 (E4.6.14.3).
"""
from _plant import reference_impl, torch_impl  # noqa: F401

CLAUSE = "4.6 step 14"
AREA = "reader"
EXPECT = "caught"


def make():
    return reference_impl(lib=[('metadata.py', '_SEED_RE = re.compile(r"0|[1-9][0-9]{0,19}")',
                                '_SEED_RE = re.compile(r"[0-9]{1,20}")')],
                          name='planted: seed with leading zeros accepted')
