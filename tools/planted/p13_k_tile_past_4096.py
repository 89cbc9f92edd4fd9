"""The adapter's input projection handles at most 4096 input features (one K-tile): features past
4096 are silently dropped from x A_l^T.

A kernel written and tested on models with hidden size <= 4096 (BERT, Llama-7B) and run on a
larger one (Llama-70B: 8192, 28672 in the MLP). Spec 3.2: h = x A_l^T over all in_features.
Visible only when in_features > 4096.
"""
from _plant import reference_impl, torch_impl  # noqa: F401

CLAUSE = "3.2"
AREA = "size"
EXPECT = "caught"


def make():
    return reference_impl(lib=[("layer.py",
                                "    h = op.mm(op.cast(_dropped(x, dropout_mask, dropout)), A_l.T)  # (..., r)\n",
                                "    h = op.mm(op.cast(_dropped(x, dropout_mask, dropout))[..., :4096], "
                                "A_l.T[:4096])  # (..., r)\n")],
                          name="planted: K tile capped at 4096")
