"""Deliberately wrong implementations for checks_own.py: each must fail the
check named in ``CAUGHT_BY`` (tests/conformance/test_conformance.py asserts it)."""
from __future__ import annotations

CAUGHT_BY: dict = {}  # class -> the name of the check that catches it
