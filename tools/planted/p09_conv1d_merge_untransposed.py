"""Merge adds Delta W in (out, in) orientation to a GPT-2 Conv1D weight stored as (in, out).

Spec 3.7: conv1d weights are (in, out); Delta W is transposed before the add (3.5). Square layers
merge without a shape error, with the wrong values.
"""
from _plant import reference_impl, torch_impl  # noqa: F401

CLAUSE = "3.7"
AREA = "math"
EXPECT = "caught"


def make():
    return reference_impl(lib=[("layer.py", '    return dW if layout == "linear" else dW.T\n', "    return dW\n")],
                          name="planted: conv1d Delta W not transposed")
