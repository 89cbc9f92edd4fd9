"""The writer always writes ``base_model.fingerprint``: when it does not know the base model's
weights it hashes what it has (here no weights at all: the sha256 of nothing).

Spec 4.3: the fingerprint is the sha256 of the base model's weights; a writer that does not know
them writes none (a made-up fingerprint makes every reader with the real model refuse the file).
"""
from _plant import reference_impl

CLAUSE = "4.3"
AREA = "writer"
EXPECT = "caught"


def make():
    return reference_impl(impl=[("        vera_ref.save_adapter(adapter.to_adapter(), path)\n",
                                 "        ad = adapter.to_adapter()\n"
                                 "        if adapter.base_weights is None and 'fingerprint' not in "
                                 "(ad.config.base_model or {}):\n"
                                 "            # planted: a fingerprint of no weights\n"
                                 "            import hashlib\n"
                                 "            ad.config.base_model = {**(ad.config.base_model or {}),\n"
                                 "                                    'fingerprint': hashlib.sha256(b'').hexdigest()}\n"
                                 "        vera_ref.save_adapter(ad, path)\n")],
                          name="planted: fingerprint made up for an unknown base model")
