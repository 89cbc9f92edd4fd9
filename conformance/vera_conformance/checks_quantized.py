"""The ``quantized`` capability: an adapter on a quantized base (bitsandbytes-style 4/8-bit)\ncompared with the reference applied to the dequantized W0 (spec 5.2 on the adapter term).
"""
from __future__ import annotations

CHECKS: list = []  # Check entries, appended to checks.CHECKS
