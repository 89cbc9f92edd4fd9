"""The writer lays tensors out in the order it met them (module order) instead of by name.

Spec 4.7: writers SHOULD order tensors by name (as safetensors does), so that two writers of the
same content write the same bytes.
"""
from _plant import reference_impl

CLAUSE = "4.7 (SHOULD)"
AREA = "writer"
EXPECT = "caught"


def make():
    return reference_impl(lib=[("container.py", "    for name in sorted(tensors):\n",
                                "    for name in tensors:  # planted: insertion order\n")],
                          name="planted: tensors in insertion order")
