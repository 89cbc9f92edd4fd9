"""The value checks every backend runs on every way an adapter's numbers come in (spec 4.5, 4.6 rule 25, 3.6).

A file read by ``vera_ref.load_adapter`` has passed rule 25 of spec 4.6 (finite values). But
values also arrive as an in-memory ``vera_ref.Adapter`` (built by a program, never read) and
are converted to the dtype a backend holds them in (a float64 file held as float32, a model's
float16 input): both are paths around rule 25. ``checked_values`` is the one function for all
of them, so vera_torch, vera_jax and vera_onnx refuse the same values with the same words:

- present, an array of numbers, of the expected shape;
- finite as given (spec 4.6 rule 25: ``contains non-finite values (NaN or infinity)``);
- finite after rounding to the dtype it will be held in (a value that overflows it would be
  served as infinity; spec 3.6 forbids a non-finite weight where the inputs were finite).

NumPy only. The error type is the caller's (``error(field, problem)``): ``AdapterFileError``
by default, the concern of a file or ``Adapter``; vera_onnx passes its ``OnnxAdapterError``.
"""
from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from .dtypes import check_name, compute_dtype, round_to
from .errors import AdapterFileError

ErrorFactory = Callable[[str, str], Exception]

NON_FINITE = "contains non-finite values (NaN or infinity)"  # spec 4.6, E4.6.25.1's problem text


def _dtype_name(dtype) -> str:
    """'float32', 'float16', 'bfloat16' or 'float64' for a name, a NumPy dtype or a framework dtype."""
    if isinstance(dtype, str):
        text = dtype
    else:
        try:
            text = np.dtype(dtype).name  # NumPy types and dtypes; JAX's bfloat16 (ml_dtypes) too
        except TypeError:
            text = str(dtype).replace("torch.", "")  # torch.float16 -> "float16"
    try:
        return check_name(text)
    except (TypeError, ValueError):
        raise ValueError(f"dtype must be one of float64, float32, float16, bfloat16, got {dtype!r}") from None


def checked_values(field: str, values, shape: tuple[int, ...], dtype="float64", *,
                   error: ErrorFactory = AdapterFileError) -> np.ndarray:
    """``values`` as a C-contiguous NumPy array of ``shape`` rounded to ``dtype``, or ``error(field, problem)``.

    ``dtype``: the spec's name (``"float32"``, ``"float16"``, ``"bfloat16"``, ``"float64"``) or a
    NumPy / framework dtype of one of them; bfloat16 values come back as float32 holding
    bfloat16 values (``vera_ref.dtypes.round_to``). The problems, in this order:

    - ``"is not an array of numbers"`` (strings, objects, complex numbers, ragged lists);
    - ``"shape [..] must be [..]"``;
    - ``"contains non-finite values (NaN or infinity)"`` (spec 4.6 rule 25, on the values as given);
    - ``"values overflow <dtype>"`` (finite as given, infinite once rounded to ``dtype``).
    """
    name = _dtype_name(dtype)
    try:
        arr = np.asarray(values)
        if arr.dtype.kind not in "fiu":
            raise TypeError
        arr = arr.astype(np.float64)  # exact for every float and every int below 2**53
    except (TypeError, ValueError, OverflowError):
        raise error(field, "is not an array of numbers") from None
    if tuple(arr.shape) != tuple(shape):
        raise error(field, f"shape {list(arr.shape)} must be {list(shape)}")
    if not np.isfinite(arr).all():  # spec 4.6 rule 25
        raise error(field, NON_FINITE)
    with np.errstate(over="ignore"):
        held = round_to(arr, name)
    if not np.isfinite(held).all():  # spec 3.6: a finite input never becomes an infinite one
        raise error(field, f"values overflow {name}")
    return np.ascontiguousarray(held, dtype=compute_dtype(name))


def checked_table(table: Mapping[str, object], key: str, field: str, shape: tuple[int, ...], dtype="float64", *,
                  error: ErrorFactory = AdapterFileError) -> np.ndarray:
    """``checked_values(field, table[key], ...)``, with ``error(field, "missing")`` when ``key`` is absent."""
    if key not in table:
        raise error(field, "missing")
    return checked_values(field, table[key], shape, dtype, error=error)


__all__ = ["checked_values", "checked_table", "NON_FINITE"]
