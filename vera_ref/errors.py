"""Exception types of the VeRA reference, one per concern (spec 0.3).

Every error raised for bad input is one of these; messages are stable and tested
verbatim, so callers may match on them.
"""
from __future__ import annotations


class VeraError(Exception):
    """Base class of every error this kit raises on purpose."""


class ProjectionError(VeraError, ValueError):
    """Arguments of the generator or of a projection are out of range (spec 1, 2)."""


class ShapeError(VeraError, ValueError):
    """Arrays handed to the math functions do not fit together (spec 3)."""


class AdapterFileError(VeraError, ValueError):
    """An adapter file or metadata document breaks a rule of spec 4.

    ``field`` names the offending field (a metadata key, a tensor name, ``header``, ``path``,
    ``file``, ...); ``code`` is the stable, language-neutral code of the broken rule of
    spec 4.6 (e.g. ``"E4.6.12.2"``; None for problems found outside the rules of 4.6, e.g. by
    a backend's loader); the message is ``"<field>: <problem>"``.
    """

    def __init__(self, field: str, problem: str, code: str | None = None) -> None:
        self.field = field
        self.problem = problem
        self.code = code
        super().__init__(f"{field}: {problem}")

    def __reduce__(self):  # keep field, problem and code through pickling (multiprocessing)
        return (type(self), (self.field, self.problem, self.code))


class ConversionError(VeraError, ValueError):
    """A checkpoint of another framework cannot be converted without changing the model (spec 2.5.3, 2.7)."""


class ModelMismatchError(VeraError, ValueError):
    """An adapter does not fit the model it is loaded into: a module is missing or has
    other dimensions, or the base weights' fingerprint differs (spec 4.3)."""


class OnnxError(VeraError, ValueError):
    """An ONNX export or ONNX Runtime serving request that cannot be done right: an adapter that
    does not fit the exported model, overlapping adapters, adapters under IOBinding (spec 0.3)."""
