"""The writer leaves ``module_prefix`` empty and writes full module names.

Spec 4.3: writers use the longest prefix common to all names that leaves each name non-empty.
The file reads back the same, so only the bytes show it.
"""
from _plant import reference_impl, torch_impl  # noqa: F401

CLAUSE = "4.3"
AREA = "writer"
EXPECT = "caught"


def make():
    return reference_impl(lib=[('metadata.py', '    prefix = common_prefix([m.name for m in cfg.modules])\n',
                                '    prefix = ""  # planted\n')],
                          name='planted: module_prefix not used')
