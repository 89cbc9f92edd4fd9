"""vera_conformance: check any VeRA implementation against the spec (spec 5.3).

Command line: ``vera-ref conformance --impl module:factory ...`` (see runner.py).
pytest: ``pytest -p vera_conformance.pytest_plugin --pyargs vera_conformance --vera-impl module:factory``.
Other languages: ``vera-ref conformance-vectors --template/--results`` (see vectors_runner.py).
"""
from .checks import CHECKS
from .protocol import (CAPABILITIES, ConformanceError, Implementation, LayerCase, LoadedAdapter, Trained,
                       load_implementation)

__all__ = ["CHECKS", "CAPABILITIES", "ConformanceError", "Trained", "Implementation", "LayerCase", "LoadedAdapter", "load_implementation"]
