"""The seed rule of spec 1.3, the one place that decides it (used by the generator registry and
the projection functions)."""
from __future__ import annotations

from typing import Any

import numpy as np

from .errors import ProjectionError

SEED_LIMIT = 1 << 64  # spec 1.3: seed in [0, 2^64)


def check_seed(seed: Any) -> int:
    """spec 1.3: an integer (not a bool) in [0, 2^64); returns it as a Python int, else ``ProjectionError``."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise ProjectionError(f"seed must be an integer, got {type(seed).__name__}")
    if not 0 <= int(seed) < SEED_LIMIT:
        raise ProjectionError(f"seed must be in [0, 2^64), got {seed}")
    return int(seed)
