"""Plant one bug in a temporary copy of the code the kit ships, and hand back an implementation.

Every planted bug (``tools/planted/p*.py``) is a small module with a docstring (what a real
implementer gets wrong, the spec clause it breaks), ``CLAUSE``, ``AREA``, ``EXPECT`` ("caught", or
"pass" for a conforming variant the kit must not flag) and ``make()``. Most are *patches*: an exact
text edit applied to a temporary copy of ``vera_ref`` (or ``vera_torch``) and of the shipped wrapper
(``impls/reference.py`` or ``impls/torch_impl.py``), imported under a name of its own. The installed
``vera_ref``, which the kit uses as its oracle, is never touched, so a planted bug can never leak into
the reference the kit compares with.

Each edit must match exactly once: when the shipped code changes under a patch, ``make()`` raises
``StalePlant`` and the tally reports the bug as stale, never as caught or escaped.
"""
from __future__ import annotations

import atexit
import importlib
import importlib.util
import itertools
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = {"vera_ref": ROOT / "vera_ref", "vera_torch": ROOT / "backends" / "vera_torch"}
IMPLS = ROOT / "conformance" / "vera_conformance" / "impls"
_TMP: list[Path] = []
_COUNT = itertools.count()

Edit = tuple[str, str, str]  # (file inside the package, exact old text, new text)


class StalePlant(RuntimeError):
    """A planted edit no longer matches the shipped code exactly once."""


def _tmpdir() -> Path:
    if not _TMP:
        _TMP.append(Path(tempfile.mkdtemp(prefix="vera-planted-")))
        sys.path.insert(0, str(_TMP[0]))
        atexit.register(shutil.rmtree, _TMP[0], True)
    return _TMP[0]


def apply(text: str, old: str, new: str, where: str) -> str:
    n = text.count(old)
    if n != 1:
        raise StalePlant(f"{where}: the planted edit's old text occurs {n} times (expected once): {old[:80]!r}")
    return text.replace(old, new)


def package_copy(package: str, edits: list[Edit]) -> str:
    """A copy of ``package`` (vera_ref or vera_torch) with ``edits`` applied, importable under the
    returned name; its relative imports stay inside the copy."""
    name = f"planted_{package}_{next(_COUNT)}"
    dest = _tmpdir() / name
    shutil.copytree(SOURCES[package], dest, ignore=shutil.ignore_patterns("__pycache__"))
    for rel, old, new in edits:
        path = dest / rel
        path.write_text(apply(path.read_text(), old, new, f"{package}/{rel}"))
    importlib.invalidate_caches()
    importlib.import_module(name)
    return name


def _module_from_text(text: str, name: str):
    path = _tmpdir() / f"{name}.py"
    path.write_text(text)
    importlib.invalidate_caches()
    return importlib.import_module(name)


def reference_impl(lib: list[Edit] = (), impl: list[tuple[str, str]] = (), name: str = "planted"):
    """``impls/reference.py`` on a copy of vera_ref with ``lib`` edits; ``impl`` edits (old, new)
    are applied to the wrapper itself."""
    pkg = package_copy("vera_ref", list(lib))  # always a copy: baseline and bugs take one path
    text = (IMPLS / "reference.py").read_text()
    text = apply(text, "import vera_ref\n", f"import {pkg} as vera_ref\n", "reference.py")
    text = apply(text, "from vera_ref.dtypes import", f"from {pkg}.dtypes import", "reference.py")
    text = apply(text, "from ..protocol import", "from vera_conformance.protocol import", "reference.py")
    for old, new in impl:
        text = apply(text, old, new, "impls/reference.py")
    mod = _module_from_text(text, f"planted_reference_{next(_COUNT)}")
    obj = mod.make()
    obj.name = name
    return obj


def torch_impl(lib: list[Edit] = (), impl: list[tuple[str, str]] = (), name: str = "planted", fused=None):
    """``impls/torch_impl.py`` on a copy of vera_torch with ``lib`` edits (vera_ref itself is the
    installed one); ``impl`` edits (old, new) are applied to the wrapper."""
    pkg = package_copy("vera_torch", list(lib))  # always a copy: baseline and bugs take one path
    text = (IMPLS / "torch_impl.py").read_text()
    text = text.replace("from vera_torch", f"from {pkg}")
    text = apply(text, "from ..protocol import", "from vera_conformance.protocol import", "torch_impl.py")
    text = apply(text, "from ..torch_helpers import", "from vera_conformance.torch_helpers import", "torch_impl.py")
    for old, new in impl:
        text = apply(text, old, new, "impls/torch_impl.py")
    mod = _module_from_text(text, f"planted_torch_impl_{next(_COUNT)}")
    obj = mod.make(fused)
    obj.name = name
    return obj


def load_bug(path: str | Path):
    """The planted-bug module at ``path`` (for the tally and the tests)."""
    path = Path(path)
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(f"planted_bug_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
