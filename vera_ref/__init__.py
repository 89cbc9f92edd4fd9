"""vera_ref: the NumPy reference of the VeRA kit specification (spec/).

Public names used by the conformance kit and by outside checks:
philox4x32, projection, forward, backward, merge, unmerge, Adapter, load_adapter,
save_adapter, validate_adapter, peft_projection.
"""
__version__ = "1.2.0"

from .adapter import Adapter, base_fingerprint, load_adapter, new_adapter, save_adapter, validate_adapter
from .errors import (AdapterFileError, ConversionError, ModelMismatchError, OnnxError, ProjectionError, ShapeError,
                     VeraError)
from .layer import Grads, backward, delta_weight, forward, merge, unmerge
from .metadata import SPEC_VERSION, AdapterConfig, ModuleSpec
from .peft_mt19937 import peft_projection
from .philox import philox4x32
from .projection import kaiming_bound, projection

__all__ = [
    "__version__", "SPEC_VERSION", "philox4x32", "projection", "kaiming_bound", "peft_projection",
    "forward", "backward", "merge", "unmerge", "delta_weight", "Grads",
    "Adapter", "AdapterConfig", "ModuleSpec", "new_adapter", "load_adapter", "save_adapter",
    "validate_adapter", "base_fingerprint",
    "VeraError", "ProjectionError", "ShapeError", "AdapterFileError", "ConversionError", "ModelMismatchError",
    "OnnxError",
]
