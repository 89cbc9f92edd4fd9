"""The layer takes the trailing rows of B instead of the leading ones (forward only).

An implementer who stores B as (r, n_out) slices ``B[-out:]`` after a transpose, or reads the
"last out rows" of a larger table. Spec 2.3: a layer uses the leading slices A[:, :in], B[:out].
Invisible when out_features = n_out.
"""
from _plant import reference_impl, torch_impl  # noqa: F401

CLAUSE = "2.3"
AREA = "math"
EXPECT = "caught"


def make():
    return reference_impl(lib=[("layer.py", "op.cast(B[:out_f, :])  # (r, in), (out, r)",
                                "op.cast(B[B.shape[0] - out_f:, :])  # (r, in), (out, r)")],
                          name="planted: trailing slice of B in the forward")
