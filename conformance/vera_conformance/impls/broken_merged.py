"""Deliberately wrong implementations for the merged-layer forward and evaluation-mode gradient
checks (checks_math.py): each must fail the check named in ``CAUGHT_BY``
(tests/conformance/test_conformance.py asserts it)."""
from __future__ import annotations

CAUGHT_BY: dict = {}
