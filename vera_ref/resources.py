"""Where the installed package finds the normative files (spec text, schemas, vectors).

The repository's ``spec/`` folder is shipped as the package data of ``vera_ref.spec``
(``pyproject.toml``), so an installed copy checks itself against the same vectors as a
checkout (``vera-ref vectors --check``). Read them through these functions only.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path


def spec_dir() -> Path:
    """The ``spec/`` folder as a path (a checkout's own folder under an editable install)."""
    return Path(str(resources.files("vera_ref.spec")))


def vectors_dir() -> Path:
    """``spec/vectors``: the test vectors of spec 6."""
    return spec_dir() / "vectors"


def schema_dir() -> Path:
    """``spec/schema``: the JSON Schemas of spec 4."""
    return spec_dir() / "schema"
