"""The writer does not pad the safetensors header to a multiple of 8 bytes.

Spec 4.7: writers SHOULD pad the header with spaces to a multiple of 8 bytes (as safetensors
does; some readers map tensors in place and need the alignment).
"""
from _plant import reference_impl, torch_impl  # noqa: F401

CLAUSE = "4.7 (SHOULD)"
AREA = "writer"
EXPECT = "caught"


def make():
    return reference_impl(lib=[('container.py', '    text += b" " * (-len(text) % 8)\n',
                                '')],
                          name='planted: header not padded')
