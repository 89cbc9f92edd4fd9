"""Resolve ``module:attr`` names given on the command line (README "Command line").

``--impl mymodule:make`` and ``--model mypkg.models:factory`` name a module the way
pytest finds test modules: the current folder comes first on ``sys.path``, so a
``mymodule.py`` beside the user works without installing it. A module that is not
found, an attribute that is not there and a name without a colon each give one
``UsageError`` line; an ImportError raised *inside* the user's module (a package it
needs is missing) is reported as such, not as "module not found".
"""
from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from .errors import VeraError


class UsageError(VeraError, ValueError):
    """A command-line value that cannot be used as given (a bad ``module:attr``, an unreadable option file)."""


def resolve_object(spec: str, option: str) -> Any:
    """The object named ``spec`` = ``module:attr`` (dotted attr allowed); ``option`` names the flag in errors."""
    module, sep, attr = (spec or "").partition(":")
    if not sep or not module or not attr:
        raise UsageError(f"{option} must be MODULE:NAME (e.g. mymodule:make), got {spec!r}")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)  # like pytest's rootdir insertion: a module beside the user is found
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
            raise UsageError(f"{option}: cannot import module {module!r} (not in the current folder "
                             f"{cwd} nor installed)") from None
        raise UsageError(f"{option}: module {module!r} needs the package {exc.name!r}, which is not installed") from None
    except SyntaxError as exc:
        raise UsageError(f"{option}: module {module!r} has a syntax error: {exc.msg} "
                         f"({exc.filename}, line {exc.lineno})") from None
    obj: Any = mod
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"{option}: module {module!r} has no attribute {attr!r}") from None
    return obj
