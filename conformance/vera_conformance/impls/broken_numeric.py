"""Deliberately wrong implementations for the long-batch cases of the numerics check
(checks_numeric.py): each must fail the check named in ``CAUGHT_BY``
(tests/conformance/test_conformance.py asserts it)."""
from __future__ import annotations

CAUGHT_BY: dict = {}
