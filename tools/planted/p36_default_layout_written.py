"""The writer writes the default layout ``linear`` in every module entry.

Spec 4.3: ``layout`` defaults to linear and writers omit it when linear (the canonical form of a
file is unique).
"""
from _plant import reference_impl, torch_impl  # noqa: F401

CLAUSE = "4.3"
AREA = "writer"
EXPECT = "caught"


def make():
    return reference_impl(lib=[('metadata.py', '+ ([m.layout] if m.layout != "linear" else [])',
                                '+ [m.layout]')],
                          name='planted: linear layout written')
