"""The writer drops ``provenance`` (writes an empty object).

Spec 4.3: ``provenance`` is written as given (trainer, data, date); a file that loses it passes
every reader rule.
"""
from _plant import reference_impl, torch_impl  # noqa: F401

CLAUSE = "4.3"
AREA = "writer"
EXPECT = "caught"


def make():
    return reference_impl(lib=[('metadata.py', '"provenance": cfg.provenance,',
                                '"provenance": {},')],
                          name='planted: provenance dropped')
