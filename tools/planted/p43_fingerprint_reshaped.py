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
                                '        W = W if m.layout == "linear" else W.reshape(W.shape[1], W.shape[0])  # '
                                '(out, in)\n')],
                          # the wrapper fingerprints with the (planted) library's own function
                          impl=[("        vera_ref.save_adapter(adapter.to_adapter(), path)\n",
                                 "        ad = adapter.to_adapter()\n"
                                 "        if adapter.base_weights is not None:\n"
                                 "            ad.config.base_model['fingerprint'] = vera_ref.base_fingerprint(\n"
                                 "                adapter.base_weights, ad.config.modules)\n"
                                 "        vera_ref.save_adapter(ad, path)\n")],
                          name='planted: conv1d fingerprint reshaped, not transposed')
