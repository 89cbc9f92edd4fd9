"""Regular expressions from untrusted PEFT configs, matched in bounded time (README "PEFT compatibility").

PEFT applies ``target_modules`` (and ``exclude_modules``, ``modules_to_save``, ``layers_pattern``)
with Python's backtracking ``re``: a hostile checkpoint can make matching exponential
(``(a|aa)+$`` against 40 ``a``) or compiling huge (a 1 MB pattern). Here the pattern is parsed by
Python's own regex parser (so PEFT's syntax is exactly what is accepted) after bounds on its
length and group nesting, and then run as a Thompson automaton (Pike-style set simulation)
that never backtracks: the work is at most about ``states x len(text)`` per match, with
``states <= MAX_STATES``, and a work budget (``MAX_STEPS``) stops anything beyond that with
``RegexError``; a ``Budget`` bounds the steps of all the matches of one conversion together
(``MAX_TOTAL_STEPS``). No dependency beyond the standard library.

Supported: literals, classes, ``.``, anchors (``^ $ \\A \\Z \\b \\B``), alternation, groups,
greedy and lazy repeats (same yes/no answer), lookahead and fixed-width lookbehind, the flags
``i s m x a u``. Refused with ``RegexError``: backreferences, conditional groups, atomic
groups and possessive repeats (their yes/no answer depends on backtracking order), and
patterns beyond the bounds. Case-insensitive matching compares the lower and upper case
forms of single characters.
"""
from __future__ import annotations

import re
from functools import lru_cache

from re import _constants as C  # noqa: the parser Python's own re uses
from re import _parser as P

MAX_PATTERN_CHARS = 1 << 16  # a PEFT pattern of a 560-module model's full paths is ~20 kB
MAX_NESTING = 100  # group nesting before parsing (Python's parser recurses per level)
MAX_STATES = 1 << 17  # automaton states after expanding counted repeats
MAX_STEPS = 1 << 20  # state visits per match call
MAX_TOTAL_STEPS = 1 << 22  # state visits per Budget (one conversion: every module, every pattern)


class Budget:
    """Automaton steps shared by several matches (``steps_left``); ``RegexError`` once spent."""

    def __init__(self, steps: int | None = None) -> None:
        self.limit = MAX_TOTAL_STEPS if steps is None else steps
        self.steps_left = self.limit


class RegexError(ValueError):
    """A pattern this module refuses, or a match that exceeded its work budget."""


_CHAR, _SPLIT, _JMP, _AT, _LOOK, _MATCH = range(6)


def _nesting(pattern: str) -> int:
    """Deepest '(' nesting outside character classes (escapes skipped); an upper bound is enough."""
    depth = deepest = 0
    i, n, in_class = 0, len(pattern), False
    while i < n:
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            if c == "]":
                in_class = False
        elif c == "[":
            in_class = True
            j = i + 1
            if j < n and pattern[j] == "^":
                j += 1
            if j < n and pattern[j] == "]":  # a leading ']' is a literal
                j += 1
            i = j
            continue
        elif c == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif c == ")":
            depth = max(depth - 1, 0)
        i += 1
    return deepest


class Program:
    """A compiled pattern: ``literals`` (a frozenset when the pattern is an alternation of plain
    strings, matched by set membership) or an instruction list."""

    def __init__(self, pattern: str) -> None:
        if not isinstance(pattern, str):
            raise RegexError(f"must be a string, got {type(pattern).__name__}")
        if len(pattern) > MAX_PATTERN_CHARS:
            raise RegexError(f"is {len(pattern)} characters long; at most {MAX_PATTERN_CHARS} are read")
        if _nesting(pattern) > MAX_NESTING:
            raise RegexError(f"nests groups deeper than {MAX_NESTING} levels")
        try:
            parsed = P.parse(pattern, 0)
        except re.error as exc:
            raise RegexError(f"is not a valid regular expression ({exc})") from None
        except (RecursionError, OverflowError, MemoryError, ValueError) as exc:
            raise RegexError(f"is not a usable regular expression ({type(exc).__name__})") from None
        self.pattern = pattern
        self.literals = _literal_set(parsed.data, parsed.state.flags)
        self.prog: list = []
        if self.literals is None:
            self.prog = _Compiler().program(parsed.data, parsed.state.flags)

    def match(self, text: str, start: int = 0, *, full: bool, budget: Budget | None = None) -> bool:
        """``re.fullmatch`` (full=True) or ``re.match`` (full=False) of ``text`` from ``start``."""
        if self.literals is not None:
            if full:
                return text[start:] in self.literals
            return any(text.startswith(s, start) for s in self.literals)
        run = _Run(text, budget)
        try:
            return run.ends(self.prog, start, len(text) if full else None, first=True) != set()
        finally:
            run.settle()

    def ends(self, text: str, start: int, budget: Budget | None = None) -> set[int]:
        """Every position at which a match of the pattern starting at ``start`` can end."""
        if self.literals is not None:
            return {start + len(s) for s in self.literals if text.startswith(s, start)}
        run = _Run(text, budget)
        try:
            return run.ends(self.prog, start, None, first=False)
        finally:
            run.settle()


@lru_cache(maxsize=256)
def compile_untrusted(pattern: str) -> Program:
    return Program(pattern)


def fullmatch(pattern: str, text: str) -> bool:
    return compile_untrusted(pattern).match(text, full=True)


def prefix_match(pattern: str, text: str) -> bool:
    return compile_untrusted(pattern).match(text, full=False)


# -- compiling ---------------------------------------------------------------------------------
def _literal_set(data, flags, budget: int = 1 << 14) -> frozenset | None:
    """The strings of a pattern made only of literals, groups without flags and alternation
    (our own exports: Python's parser factors their common prefixes out), else None."""
    if flags & ~C.SRE_FLAG_UNICODE:
        return None
    out = {""}
    for op, av in (data.data if hasattr(data, "data") else data):
        if op is C.LITERAL:
            part = {chr(av)}
        elif op is C.SUBPATTERN and av[1] == 0 and av[2] == 0:
            part = _literal_set(av[3], flags, budget)
        elif op is C.BRANCH:
            part = set()
            for alt in av[1]:
                sub = _literal_set(alt, flags, budget)
                if sub is None:
                    return None
                part |= sub
        else:
            return None
        if part is None or len(out) * len(part) > budget:
            return None
        out = {a + b for a in out for b in part}
    return frozenset(out)


class _Compiler:
    def __init__(self) -> None:
        self.size = 0

    def program(self, data, flags) -> list:
        prog: list = []
        self.emit(prog, data, flags)
        prog.append((_MATCH,))
        return prog

    def add(self, prog: list, ins: tuple) -> int:
        self.size += 1
        if self.size > MAX_STATES:
            raise RegexError(f"expands to more than {MAX_STATES} automaton states (counted repeats)")
        prog.append(ins)
        return len(prog) - 1

    def emit(self, prog: list, data, flags: int) -> None:
        for op, av in (data.data if hasattr(data, "data") else data):
            if op in (C.LITERAL, C.NOT_LITERAL, C.ANY, C.IN):
                test = _char_test(op, av, flags)
                if op is C.LITERAL and not flags & C.SRE_FLAG_IGNORECASE:
                    self.add(prog, (_CHAR, test, chr(av)))  # the common case: compared directly
                else:
                    self.add(prog, (_CHAR, test, None))
            elif op is C.AT:
                self.add(prog, (_AT, av, flags))
            elif op is C.BRANCH:
                jumps = []
                alts = av[1]
                for k, alt in enumerate(alts):
                    if k < len(alts) - 1:
                        split = self.add(prog, None)
                        self.emit(prog, alt, flags)
                        jumps.append(self.add(prog, None))
                        prog[split] = (_SPLIT, split + 1, len(prog))
                    else:
                        self.emit(prog, alt, flags)
                for j in jumps:
                    prog[j] = (_JMP, len(prog))
            elif op is C.SUBPATTERN:
                _, add_flags, del_flags, sub = av
                self.emit(prog, sub, (flags | add_flags) & ~del_flags)
            elif op in (C.MAX_REPEAT, C.MIN_REPEAT):
                lo, hi, sub = av
                for _ in range(lo):
                    self.emit(prog, sub, flags)
                if hi == C.MAXREPEAT:  # L: split(body, out); body; jmp L
                    split = self.add(prog, None)
                    self.emit(prog, sub, flags)
                    self.add(prog, (_JMP, split))
                    prog[split] = (_SPLIT, split + 1, len(prog))
                else:
                    splits = []
                    for _ in range(hi - lo):
                        splits.append(self.add(prog, None))
                        self.emit(prog, sub, flags)
                    for s in splits:
                        prog[s] = (_SPLIT, s + 1, len(prog))
            elif op in (C.ASSERT, C.ASSERT_NOT):
                direction, sub = av
                width = 0
                if direction < 0:
                    lo, hi = sub.getwidth()
                    if lo != hi:
                        raise RegexError("has a look-behind of variable width")
                    width = lo
                body = self.program(sub, flags)
                self.add(prog, (_LOOK, body, op is C.ASSERT_NOT, direction < 0, width))
            else:  # GROUPREF, GROUPREF_EXISTS, ATOMIC_GROUP, POSSESSIVE_REPEAT, ...
                raise RegexError(f"uses {str(op).lower()}, which is not supported for untrusted patterns")


def _is_word(c: str) -> bool:
    return c.isalnum() or c == "_"


def _category(cat, c: str, ascii_only: bool) -> bool:
    if ascii_only and not c.isascii():
        return cat in (C.CATEGORY_NOT_DIGIT, C.CATEGORY_NOT_SPACE, C.CATEGORY_NOT_WORD)
    if cat is C.CATEGORY_DIGIT:
        return c.isdecimal()
    if cat is C.CATEGORY_NOT_DIGIT:
        return not c.isdecimal()
    if cat is C.CATEGORY_SPACE:
        return c.isspace()
    if cat is C.CATEGORY_NOT_SPACE:
        return not c.isspace()
    if cat is C.CATEGORY_WORD:
        return _is_word(c)
    if cat is C.CATEGORY_NOT_WORD:
        return not _is_word(c)
    raise RegexError(f"uses {str(cat).lower()}, which is not supported")


def _char_test(op, av, flags: int):
    """(kind, data, flags) for one character position; evaluated by ``_char_ok``."""
    if op is C.IN:
        for item_op, item in av:  # refuse unsupported categories now, not mid-match
            if item_op is C.CATEGORY:
                _category(item, "a", False)
            elif item_op not in (C.LITERAL, C.RANGE, C.NEGATE):
                raise RegexError(f"uses {str(item_op).lower()} in a class, which is not supported")
    return (op, av, flags)


def _forms(c: str, flags: int) -> tuple[str, ...]:
    if flags & C.SRE_FLAG_IGNORECASE:
        lo, up = c.lower(), c.upper()
        return tuple({c} | {x for x in (lo, up) if len(x) == 1})
    return (c,)


def _char_ok(test, c: str) -> bool:
    op, av, flags = test
    if op is C.ANY:
        return c != "\n" or bool(flags & C.SRE_FLAG_DOTALL)
    forms = _forms(c, flags)
    if op is C.LITERAL:
        return any(ord(f) == av for f in forms)
    if op is C.NOT_LITERAL:
        return not any(ord(f) == av for f in forms)
    negate, hit = False, False
    ascii_only = bool(flags & C.SRE_FLAG_ASCII)
    for item_op, item in av:
        if item_op is C.NEGATE:
            negate = True
        elif item_op is C.LITERAL:
            hit = hit or any(ord(f) == item for f in forms)
        elif item_op is C.RANGE:
            hit = hit or any(item[0] <= ord(f) <= item[1] for f in forms)
        else:
            hit = hit or _category(item, c, ascii_only)
    return hit != negate


def _at_ok(kind, flags: int, text: str, i: int) -> bool:
    n = len(text)
    multi = bool(flags & C.SRE_FLAG_MULTILINE)
    if kind is C.AT_BEGINNING:
        return i == 0 or (multi and text[i - 1] == "\n")
    if kind is C.AT_BEGINNING_STRING:
        return i == 0
    if kind is C.AT_END:
        return i == n or (i == n - 1 and text[i] == "\n") or (multi and i < n and text[i] == "\n")
    if kind is C.AT_END_STRING:
        return i == n
    if kind in (C.AT_BOUNDARY, C.AT_NON_BOUNDARY):
        word = (lambda c: c.isascii() and _is_word(c)) if flags & C.SRE_FLAG_ASCII else _is_word
        before = i > 0 and word(text[i - 1])
        after = i < n and word(text[i])
        return (before != after) == (kind is C.AT_BOUNDARY)
    raise RegexError(f"uses {str(kind).lower()}, which is not supported")


class _Run:
    """One match call: the text, the work counter, memoised look-around verdicts."""

    def __init__(self, text: str, budget: Budget | None = None) -> None:
        self.text = text
        self.steps = 0
        self.budget = budget
        self.limit = MAX_STEPS if budget is None else min(MAX_STEPS, max(budget.steps_left, 0))
        self.looks: dict[tuple[int, int], bool] = {}

    def settle(self) -> None:
        if self.budget is not None:
            self.budget.steps_left -= self.steps

    def _spent(self) -> RegexError:
        if self.budget is not None and self.limit == max(self.budget.steps_left, 0) < MAX_STEPS:
            return RegexError(f"matching needs more than the {self.budget.limit} automaton steps one conversion may use")
        return RegexError(f"matching needs more than {MAX_STEPS} automaton steps")

    def closure(self, prog: list, pcs, i: int) -> list[int]:
        out, seen, stack = [], set(), list(pcs)
        while stack:
            pc = stack.pop()
            if pc in seen:
                continue
            seen.add(pc)
            self.steps += 1
            if self.steps > self.limit:
                raise self._spent()
            ins = prog[pc]
            kind = ins[0]
            if kind == _JMP:
                stack.append(ins[1])
            elif kind == _SPLIT:
                stack.append(ins[2])
                stack.append(ins[1])
            elif kind == _AT:
                if _at_ok(ins[1], ins[2], self.text, i):
                    stack.append(pc + 1)
            elif kind == _LOOK:
                if self.look(ins, i):
                    stack.append(pc + 1)
            else:
                out.append(pc)
        return out

    def look(self, ins: tuple, i: int) -> bool:
        _, body, negate, behind, width = ins
        key = (id(body), i)
        if key not in self.looks:
            if behind:
                ok = i - width >= 0 and bool(self.ends(body, i - width, i, first=True))
            else:
                ok = bool(self.ends(body, i, None, first=True))
            self.looks[key] = ok
        return self.looks[key] != negate

    def ends(self, prog: list, start: int, end: int | None, *, first: bool) -> set[int]:
        """Positions where a match from ``start`` ends (only ``end`` if given); with ``first``,
        stop at the first one found."""
        text, found = self.text, set()
        current = self.closure(prog, [0], start)
        i = start
        while current:
            if any(prog[pc][0] == _MATCH for pc in current) and (end is None or i == end):
                found.add(i)
                if first:
                    return found
            if i >= len(text) or (end is not None and i >= end):
                break
            c = text[i]
            nxt = []
            for pc in current:
                ins = prog[pc]
                if ins[0] == _CHAR and (c == ins[2] if ins[2] is not None else _char_ok(ins[1], c)):
                    nxt.append(pc + 1)
            self.steps += len(current)
            i += 1
            current = self.closure(prog, nxt, i) if nxt else []
        return found
