"""The writer never writes a module's layout, so a GPT-2 Conv1D module reads back as linear.

Spec 4.3 (modules[i][3]) and 3.7.
"""
from _plant import reference_impl, torch_impl  # noqa: F401

CLAUSE = "4.3"
AREA = "writer"
EXPECT = "caught"


def make():
    return reference_impl(lib=[('metadata.py', '+ ([m.layout] if m.layout != "linear" else [])',
                                '+ []')],
                          name='planted: conv1d layout dropped')
