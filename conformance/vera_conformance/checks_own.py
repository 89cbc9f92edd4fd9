"""Checks of an implementation's own generator (``generator = "own"``): the same seed gives the same\nA and B whatever the global RNGs did in between, another seed gives others, and a reload through\nthe implementation's own save/load gives the layer it saved.
"""
from __future__ import annotations

CHECKS: list = []  # Check entries, appended to checks.CHECKS
