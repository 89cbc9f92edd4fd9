"""The base-model fingerprint reshapes a Conv1D weight to (out, in) instead of transposing it: the
right shape, the wrong element order.

Spec 4.3: the fingerprint hashes W0 in (out, in) orientation.
"""
from _plant import reference_impl, torch_impl  # noqa: F401

CLAUSE = "4.3"
AREA = "writer"
EXPECT = "caught"


def make():
    return reference_impl(lib=[('adapter.py', '        W = W if m.layout == "linear" else W.T  # (out, in)\n',
                                '        W = W if m.layout == "linear" else W.reshape(W.shape[1], W.shape[0])  # (out, in)\n')],
                          name='planted: conv1d fingerprint reshaped, not transposed')
