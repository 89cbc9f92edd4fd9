"""Exception types of vera_onnx (README "ONNX and ONNX Runtime").

``OnnxError`` (from ``vera_ref.errors``, a 1.0 public name) stays the base of everything
vera_onnx raises on purpose; the subclasses below let callers tell the two concerns apart:

- ``OnnxAdapterError``: an adapter (a VeRA file, an ``.onnx_adapter`` file or in-memory
  values) that does not fit the exported model or holds values the model must not run
  with (wrong dtype or shape, NaN/Inf). ``field`` names the parameter or metadata field;
  the message is ``"<field>: <problem>"``.
- ``ExportError``: the exporter could not export the model (its own message included).
"""
from __future__ import annotations

from vera_ref.errors import OnnxError


class OnnxAdapterError(OnnxError):
    """An adapter that cannot be served by this model; ``field`` names the offending parameter."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field  # raw; the message shows it on one printable line (names come from hostile files)
        self.problem = problem
        shown = field if field.isprintable() else repr(field)[1:-1]
        super().__init__(f"{shown}: {problem}")


class ExportError(OnnxError):
    """torch.onnx could not export the model; the message carries the exporter's reason."""


__all__ = ["OnnxError", "OnnxAdapterError", "ExportError"]
