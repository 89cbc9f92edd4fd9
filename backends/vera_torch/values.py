"""An adapter's numbers as torch tensors, through the value checks every backend shares
(``vera_ref.values``: spec 4.5, 4.6 rule 25, 3.6)."""
from __future__ import annotations

import torch

from vera_ref.values import checked_table


def vector_tensor(table: dict, module: str, what: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """One vector (or stored matrix) of an Adapter as a ``dtype`` tensor: present, numbers, of
    ``shape``, finite, and finite in ``dtype`` (``AdapterFileError`` naming ``module.what`` otherwise)."""
    field = f"{module}.{what}" if what else module
    arr = checked_table(table, module, field, shape, dtype)  # bfloat16 values come back held in float32
    return torch.from_numpy(arr).to(dtype)  # exact: arr already holds dtype's values
