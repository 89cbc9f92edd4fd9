"""Resolve ``module:attr`` and ``file.py:attr`` names given on the command line (README "Command line").

``--impl mymodule:make`` and ``--model mypkg.models:factory`` name a module the way
pytest finds test modules: the current folder comes first on ``sys.path``, so a
``mymodule.py`` beside the user works without installing it. ``--impl ./wrap_mine.py:make``,
``--impl sub/dir/wrap.py:make`` or ``--impl /abs/wrap.py:make`` name a file: anything
before the last colon that ends in ``.py`` or holds a path separator is a file path
(``./wrap_mine:make`` finds ``./wrap_mine.py`` too), run the way ``python FILE`` runs it
(its folder first on ``sys.path``, so files beside it import).

A module or file that is not found, one with a syntax error, one that raises while it is
imported, an attribute that is not there and a name without a colon each give one
``UsageError`` line; an ImportError raised *inside* the user's module (a package it
needs is missing) is reported as such, not as "module not found".
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from types import ModuleType
from typing import Any

from .errors import VeraError


class UsageError(VeraError, ValueError):
    """A command-line value that cannot be used as given (a bad ``module:attr``, an unreadable option file)."""


def is_file_spec(module: str) -> bool:
    """True when the part before the colon names a file, not a dotted module path."""
    seps = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    return module.endswith(".py") or any(s in module for s in seps)


def resolve_object(spec: str, option: str) -> Any:
    """The object named ``spec`` = ``module:attr`` or ``path/file.py:attr`` (dotted attr allowed);
    ``option`` names the flag in errors."""
    module, sep, attr = (spec or "").rpartition(":")
    if not sep or not module or not attr:
        raise UsageError(f"{option} must be MODULE:NAME (e.g. mymodule:make), got {spec!r}")
    if is_file_spec(module):
        mod = _import_file(module, option)
        what = f"file {module!r}"
    else:
        mod = _import_module(module, option)
        what = f"module {module!r}"
    obj: Any = mod
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"{option}: {what} has no attribute {attr!r}") from None
    return obj


def _import_module(module: str, option: str) -> ModuleType:
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)  # like pytest's rootdir insertion: a module beside the user is found
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
            raise UsageError(f"{option}: cannot import module {module!r} (not in the current folder "
                             f"{cwd} nor installed)") from None
        raise UsageError(f"{option}: module {module!r} needs the package {exc.name!r}, which is not installed") from None
    except SyntaxError as exc:
        raise UsageError(f"{option}: module {module!r} has a syntax error: {exc.msg} "
                         f"({exc.filename}, line {exc.lineno})") from None
    except Exception as exc:  # the user's module raised while it was imported: theirs to fix, not a bug of ours
        raise UsageError(f"{option}: importing module {module!r} raised {type(exc).__name__}: "
                         f"{str(exc)[:300]}") from None


def _module_name(path: str) -> str:
    """The name a file is imported under: its stem when that is free (or already this file), else a name
    made unique by the path, so ``./torch.py`` never shadows the installed torch."""
    stem = os.path.splitext(os.path.basename(path))[0]
    if stem.isidentifier() and _free(stem, path):
        return stem
    digest = hashlib.sha256(path.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return f"_vera_file_{stem if stem.isidentifier() else 'x'}_{digest}"


def _free(name: str, path: str) -> bool:
    known = sys.modules.get(name)
    if known is not None:
        return os.path.realpath(getattr(known, "__file__", None) or "") == os.path.realpath(path)
    try:
        found = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return False
    # free: not the name of an installed module (or the finder found this very file, beside the user)
    return found is None or os.path.realpath(found.origin or "") == os.path.realpath(path)


def _import_file(given: str, option: str) -> ModuleType:
    path = os.path.abspath(given)
    if not os.path.exists(path) and not given.endswith(".py") and os.path.isfile(path + ".py"):
        path += ".py"
    if not os.path.exists(path):
        raise UsageError(f"{option}: no such file: {given}")
    if os.path.isdir(path):
        raise UsageError(f"{option}: {given} is a folder, not a Python file (name a .py file or a MODULE)")
    if not os.path.isfile(path):
        raise UsageError(f"{option}: {given} is not a regular file")
    name = _module_name(path)
    known = sys.modules.get(name)
    if known is not None:  # the same file asked for again (the CLI checks, then the runner loads): one module
        return known
    folder = os.path.dirname(path)
    if folder not in sys.path:
        sys.path.insert(0, folder)  # like `python FILE`: files beside it import
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"{option}: {given} cannot be imported as a Python file")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # before running it, as import does (dataclasses and pickling look it up)
    try:
        spec.loader.exec_module(mod)
    except BaseException as exc:
        sys.modules.pop(name, None)
        if isinstance(exc, ModuleNotFoundError):
            raise UsageError(f"{option}: file {given!r} needs the package {exc.name!r}, "
                             "which is not installed") from None
        if isinstance(exc, SyntaxError):
            raise UsageError(f"{option}: file {given!r} has a syntax error: {exc.msg} "
                             f"({exc.filename}, line {exc.lineno})") from None
        if isinstance(exc, Exception):
            raise UsageError(f"{option}: importing file {given!r} raised {type(exc).__name__}: "
                             f"{str(exc)[:300]}") from None
        raise
    return mod
