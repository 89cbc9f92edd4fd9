"""The reader refuses an unknown ``base_model`` key but names the last one in code-point order instead
of the first.

Spec 4.6 step 20.4 (1.2 pins which key a reader names).
"""
from _plant import reference_impl, torch_impl  # noqa: F401

CLAUSE = "4.6 step 20"
AREA = "reader"
EXPECT = "caught"


def make():
    return reference_impl(lib=[('metadata.py', '"base_model." + unknown[0]',
                                '"base_model." + unknown[-1]')],
                          name='planted: E4.6.20.4 names the last unknown key')
