"""Exception types of vera_torch, one per concern; each subclasses ``vera_ref.errors.VeraError``.

Besides these, vera_torch raises the reference's own types where they fit:
``vera_ref.errors.AdapterFileError`` (a file or ``Adapter`` breaks a rule of spec 4),
``vera_ref.errors.ModelMismatchError`` (an adapter does not fit the model, spec 4.3) and
``vera_ref.errors.ProjectionError`` (projection arguments out of range, spec 1-2).
Quantized bases (spec 7) have theirs in ``quantized.py``: ``QuantizedLayerError`` (a quantized layer
type that is not supported), ``RequantizationError`` (a ``MergeError``: requantizing would move the
output past the bound) and the warning ``QuantizedBaseWarning`` (a file read onto another kind of base).
"""
from __future__ import annotations

from vera_ref.errors import VeraError


class ConfigError(VeraError, ValueError):
    """A ``VeraConfig`` field is out of range: ``"<field>: <problem>"``."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class AdapterNameError(VeraError, KeyError):
    """No adapter of that name, or a new adapter's name is taken."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class MergeError(VeraError, RuntimeError):
    """A merge that cannot be done right (the merged weight would not be finite in its dtype),
    or a request a model with merged adapters cannot serve (switching, mixed batches, deleting
    the merged adapter). The weights are left as they were."""


class BatchError(VeraError, ValueError):
    """``adapter_ids`` does not fit the batch (one entry per row of dim 0)."""
