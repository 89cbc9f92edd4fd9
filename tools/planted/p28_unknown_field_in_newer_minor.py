"""The reader rejects unknown fields whatever the file's minor version.

Spec 4.8: a newer minor version may add optional fields; a reader skips unknown fields in files
whose minor version is above the profile it knows (only files at or below it are refused,
E4.6.11.1).
"""
from _plant import reference_impl, torch_impl  # noqa: F401

CLAUSE = "4.8"
AREA = "reader"
EXPECT = "caught"


def make():
    return reference_impl(lib=[('metadata.py', 'if unknown and minor <= SPEC_MINOR',
                                'if unknown')],
                          name='planted: unknown fields refused in newer minors')
