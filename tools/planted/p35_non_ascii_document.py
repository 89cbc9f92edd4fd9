"""The writer writes the metadata document as UTF-8 (``ensure_ascii=False``) instead of ASCII with
backslash-u escapes: a provenance with "café" or a module name in another script is written raw.

Spec 4.3: the canonical form is ASCII only.
"""
from _plant import reference_impl, torch_impl  # noqa: F401

CLAUSE = "4.3"
AREA = "writer"
EXPECT = "caught"


def make():
    return reference_impl(lib=[('metadata.py', 'ensure_ascii=True,',
                                'ensure_ascii=False,')],
                          name='planted: metadata document not ASCII')
