"""Exception types of vera_jax (one per concern, each a ``vera_ref.errors.VeraError``).

Besides ``MergeError``, vera_jax raises the reference's own types where they fit:
``AdapterFileError`` (a file or ``Adapter`` breaks a rule of spec 4, its values included:
``vera_ref.values``), ``ModelMismatchError`` (an adapter does not fit the model, spec 4.3),
``ProjectionError`` (spec 1-2) and ``ShapeError`` (spec 3).
"""
from __future__ import annotations

from vera_ref.errors import VeraError


class MergeError(VeraError, RuntimeError):
    """A merge that cannot be done right: a merged kernel would hold a non-finite value where the
    base kernel was finite (spec 3.6). Every kernel of the model is left as it was."""


__all__ = ["MergeError"]
