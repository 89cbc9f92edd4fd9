"""Control, not a bug: the trained vectors are held as (1, r) and (1, out) row vectors (mLoRA's
shapes). Spec 3.4 counts values, not axes: exactly r + out trained values per layer. The kit must
pass it (issue 24: it flagged these as (n, n) matrices).
"""
from _plant import reference_impl, torch_impl  # noqa: F401

CLAUSE = "3.4"
AREA = "control"
EXPECT = "pass"


def make():
    return reference_impl(impl=[('{"lambda_d": ld, "lambda_b": lb}',
                                 '{"lambda_d": ld[None, :], "lambda_b": lb[None, :]}')],
                          name="planted control: (1, n) trainable vectors")
