"""PEFT's rule for which modules a VeRA config adapts, reproduced for untrusted configs (README "PEFT compatibility").

``peft_selects`` is PEFT 0.21's ``check_target_module_exists`` for VeRA (tested against PEFT
itself); every regular expression in it runs on ``vera_ref.peft_regex``'s linear-time automaton,
never on backtracking ``re``, and every refusal is one ``ConversionError`` line.
"""
from __future__ import annotations

import contextlib
import contextvars
import re
import reprlib
from typing import Iterable, Iterator, Mapping

from .errors import ConversionError
from .peft_regex import Budget, RegexError, compile_untrusted

_BUDGET: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("peft_regex_budget", default=None)


@contextlib.contextmanager
def regex_budget(steps: int | None = None) -> Iterator[Budget]:
    """Every pattern match inside shares one ``peft_regex.Budget`` (one conversion's bound)."""
    budget = Budget() if steps is None else Budget(steps)
    token = _BUDGET.set(budget)
    try:
        yield budget
    finally:
        _BUDGET.reset(token)


def peft_selects(config: Mapping, key: str) -> bool:
    """Does PEFT (0.21, ``tuners_utils.check_target_module_exists``) adapt the module at ``key``?

    ``config`` is an adapter_config.json document; ``key`` a module path of the bare model
    (``bert.encoder.layer.0.attention.self.query``). A string ``target_modules`` is a regular
    expression that must match the whole key; a list matches a key equal to an entry or
    ending in ``"." + entry``, then filtered by ``layers_to_transform``/``layers_pattern``.
    Modules inside ``modules_to_save`` and ``exclude_modules`` are never adapted.
    ``"all-linear"`` needs the model's classes and is refused.

    The patterns come from untrusted checkpoints: they run on ``peft_regex``'s automaton, in
    time linear in the key's length, never on backtracking ``re`` (README "PEFT compatibility").
    """
    _check_rule_fields(config)
    if not isinstance(key, str):
        raise ConversionError(f"module path must be a string, got {type(key).__name__}")
    return _selects(config, key)


def _regex(field: str, pattern: str):
    """The compiled untrusted ``pattern`` of config field ``field``; ConversionError if refused."""
    try:
        return compile_untrusted(pattern)
    except RegexError as exc:
        raise ConversionError(f"{field}: {_show(pattern, 80)} {exc}") from None


def _run(field: str, pattern: str, key: str, *, full: bool, start: int = 0) -> bool:
    try:
        return _regex(field, pattern).match(key, start, full=full, budget=_BUDGET.get())
    except RegexError as exc:
        raise ConversionError(f"{field}: {_show(pattern, 80)} on {_show(key, 80)}: {exc}") from None


def _check_rule_fields(config: Mapping) -> None:
    def strings(v):
        return isinstance(v, list) and all(isinstance(x, str) for x in v)
    tm = config.get("target_modules")
    if tm is not None and not (isinstance(tm, str) or strings(tm)):
        raise ConversionError(f"target_modules must be a string or a list of strings, got {_show(tm, 80)}")
    for k in ("modules_to_save", "exclude_modules"):
        v = config.get(k)
        if v is not None and not (strings(v) or (k == "exclude_modules" and isinstance(v, str))):
            raise ConversionError(f"{k} must be a list of strings, got {_show(v, 80)}")
    lt = config.get("layers_to_transform")
    if lt is not None and not (_is_int(lt) or (isinstance(lt, list) and all(_is_int(i) for i in lt))):
        raise ConversionError(f"layers_to_transform must be an integer or a list of integers, got {_show(lt, 80)}")
    lp = config.get("layers_pattern")
    if lp is not None and not (isinstance(lp, str) or strings(lp)):
        raise ConversionError(f"layers_pattern must be a string or a list of strings, got {_show(lp, 80)}")


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict = 3, 120, 120, 6, 6


def _show(value: object, limit: int) -> str:
    """A repr of (hostile) ``value`` for a one-line message: bounded depth, length and one line."""
    try:
        text = _REPR.repr(value)
    except Exception:  # noqa: BLE001 - a hostile object's own __repr__
        text = f"<{type(value).__name__}>"
    return text[:limit]


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _selects(config: Mapping, key: str) -> bool:
    exclude = config.get("exclude_modules")
    if exclude:
        if isinstance(exclude, str):
            if _run("exclude_modules", exclude, key, full=True):
                return False
        elif key in exclude or any(key.endswith(f".{e}") for e in exclude):
            return False
    for m in config.get("modules_to_save") or ():
        if _run("modules_to_save", rf"(^|.*\.){m}($|\..*)", key, full=False):
            return False
    targets = config.get("target_modules")
    if targets is None:
        if config.get("target_parameters") is not None:
            return False
        raise ConversionError("target_modules is missing: PEFT would choose modules by model type, "
                              "which a conversion cannot know")
    if isinstance(targets, str):
        if targets.lower() == "all-linear":
            raise ConversionError("target_modules is 'all-linear': PEFT resolves it against the model's classes; "
                                  "give the module names instead")
        return _run("target_modules", targets, key, full=True)
    if key in targets:
        return True
    if not any(key.endswith(f".{t}") for t in targets):
        return False
    indexes = config.get("layers_to_transform")
    if indexes is None or (isinstance(indexes, list) and not indexes):
        return True
    pattern = config.get("layers_pattern")
    idx = None
    if pattern is None or len(pattern) == 0:
        match = _FIRST_NUMBERED.match(key)  # the first numbered segment (a fixed, linear pattern)
        idx = None if match is None else int(match.group("idx"))
    else:
        for p in [pattern] if isinstance(pattern, str) else pattern:
            idx = _layer_index(p, key)
            if idx is not None:
                break
    if idx is None:
        return False
    return idx == indexes if isinstance(indexes, int) else idx in indexes


_FIRST_NUMBERED = re.compile(r".*?\.[^.]*\.(?P<idx>\d+)\.")  # PEFT's own; each '.' starts one linear try
_NUMBER_THEN_DOT = re.compile(r"\.(\d+)\.")


def _layer_index(p: str, key: str) -> int | None:
    r"""PEFT's ``re.match(rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\.", key)`` group ``idx``, without backtracking.

    The lazy prefix tries the start, then each position after a '.' (before any newline), in
    order; at the first one where ``p`` can be followed by ``.<digits>.``, the digits are the
    index. When ``p`` could end at two places there giving different indexes, which one
    backtracking picks depends on ``p``'s inner order: refused as ambiguous."""
    prog = _regex("layers_pattern", p)
    starts = [0] + [i + 1 for i, c in enumerate(key.split("\n", 1)[0]) if c == "."]
    for i in starts:
        try:
            ends = prog.ends(key, i, _BUDGET.get())
        except RegexError as exc:
            raise ConversionError(f"layers_pattern: {_show(p, 80)} on {_show(key, 80)}: {exc}") from None
        found = {int(m.group(1)) for k in ends if (m := _NUMBER_THEN_DOT.match(key, k)) is not None}
        if len(found) > 1:
            raise ConversionError(f"layers_pattern: {_show(p, 80)} gives {_show(key, 80)} several layer indexes "
                                  f"{sorted(found)}; PEFT's choice depends on backtracking order")
        if found:
            return found.pop()
    return None


def exact_target_modules(names: Iterable[str]) -> str:
    """A ``target_modules`` string PEFT full-matches against exactly ``names`` (escaped literals)."""
    return "(?:" + "|".join(re.escape(n) for n in sorted(set(names), key=_natural)) + ")"


def check_selection(config: Mapping, wanted: Iterable[str], others: Iterable[str]) -> None:
    """Raise ConversionError unless PEFT's rule selects every name in ``wanted`` and none of ``others``."""
    wanted = list(wanted)
    missed = [n for n in wanted if not peft_selects(config, n)]
    if missed:
        raise ConversionError(f"target_modules {_show(config.get('target_modules'), 80)}: PEFT would not adapt "
                              f"{_show(missed[0], 120)}")
    extra = sorted({n for n in others if n not in set(wanted) and peft_selects(config, n)}, key=_natural)
    if extra:
        raise ConversionError(f"target_modules {_show(config.get('target_modules'), 80)}: PEFT would also adapt "
                              f"{_show(extra[0], 120)}, which the adapter does not")


def _near_names(names: Iterable[str]) -> set[str]:
    """Names a suffix or prefix rule could confuse with ``names``: every ancestor and dot-suffix."""
    out = set()
    for n in names:
        parts = n.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts)))
        out.update(".".join(parts[i:]) for i in range(1, len(parts)))
        out.add("x." + n)
    return out


def _natural(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]
