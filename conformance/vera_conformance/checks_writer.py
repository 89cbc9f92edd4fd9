"""Checks of what a writer writes (spec 4): the bytes (canonical document, module prefix, omitted\ndefaults, fingerprint) and every field a file carries, and a written file run in a real model.
"""
from __future__ import annotations

CHECKS: list = []  # Check entries, appended to checks.CHECKS
