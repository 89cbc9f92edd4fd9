"""Floating dtypes of the spec and exact conversions between them (spec 4.5, 5.2).

NumPy has no bfloat16, so BF16 values are held as float32 arrays whose low 16 bits
are zero; ``round_to`` rounds to nearest even, as every framework's cast does.
"""
from __future__ import annotations

import numpy as np

# spec 5.2: machine epsilon (distance from 1.0 to the next float) of each dtype, IEEE 754 / bfloat16
EPS = {"float64": 2.0**-52, "float32": 2.0**-23, "float16": 2.0**-10, "bfloat16": 2.0**-7}
# spec 5.2: smallest positive normal number of each dtype
TINY = {"float64": 2.0**-1022, "float32": 2.0**-126, "float16": 2.0**-14, "bfloat16": 2.0**-126}
NAMES = tuple(EPS)
# spec 4.5: safetensors dtype codes allowed for VeRA vectors
SAFETENSORS_CODE = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16"}
FROM_CODE = {v: k for k, v in SAFETENSORS_CODE.items()}


def check_name(dtype: str) -> str:
    name = str(np.dtype(dtype)) if dtype != "bfloat16" and not isinstance(dtype, str) else str(dtype)
    if name not in EPS:
        raise ValueError(f"dtype must be one of {', '.join(NAMES)}, got {dtype!r}")
    return name


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even; NaN stays NaN."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    nan = np.isnan(np.asarray(x, dtype=np.float32))
    out = rounded.astype(np.uint16)
    out[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)  # keep sign, force a quiet NaN
    return out


def bf16_from_bits(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32, exact."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def round_to(x: np.ndarray, dtype: str) -> np.ndarray:
    """Round to ``dtype`` (nearest even); float16/32/64 as NumPy arrays of that dtype,
    bfloat16 as float32 holding bfloat16 values. float64 -> bfloat16 rounds to float32 first,
    then to bfloat16 (spec 3.9), as PyTorch's casts do."""
    dtype = check_name(dtype)
    if dtype == "bfloat16":
        return bf16_from_bits(bf16_bits(np.asarray(x, dtype=np.float32)))
    return np.asarray(x).astype(dtype)


def compute_dtype(dtype: str) -> np.dtype:
    """The NumPy dtype that holds values of ``dtype`` (float32 for bfloat16)."""
    dtype = check_name(dtype)
    return np.dtype(np.float32 if dtype == "bfloat16" else dtype)
