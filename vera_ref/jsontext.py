"""The JSON dialect of adapter files (spec 4.1.1), parsed with bounded work and memory.

``loads(text)`` applies the dialect's rules as whole-text checks in a fixed order and raises
``JsonRuleError(rule, value)`` for the first one broken:

1. ``count``: at most ``MAX_STRUCTURAL`` characters that are ``"``, ``,``, ``[`` or ``{``
   (counted anywhere in the text, strings included). Checked first, in 1 MiB chunks with NumPy,
   so no parser ever sees more than about a million values: this bounds the
   memory of everything that follows to a small multiple of the text's size.
2. ``syntax``: the text is one JSON value per RFC 8259 (so ``NaN``, ``Infinity``, comments,
   single quotes and trailing commas are errors) whose strings are Unicode text: no ``\\u``
   escape of an unpaired surrogate (I-JSON, RFC 7493 2.1; ``unpaired_surrogate``).
3. ``depth``: arrays and objects nest at most ``MAX_DEPTH`` levels (the outermost value is
   level 1), measured on the text: the value of a key repeated later counts too
   (``text_depth``).
4. ``number``: every integer literal (no fraction or exponent) lies in [-2^63, 2^64); every
   other number literal has at most ``MAX_NUMBER_CHARS`` characters and a finite binary64 value.
   ``value`` is the first offending literal in text order.
5. ``duplicate``: no object has a key twice; ``value`` is the first repeated key in the order
   objects end in the text.

Every rule is a property of the text, not of the value Python builds from it (spec 4.1.1).
Python's own parser does the work (its C scanner); hooks record rules 4 and 5 instead of
letting Python build 5,000-digit integers or infinities, and they see every literal and every
object of the text, those a repeated key drops included. A text so deep that the C scanner
runs out of recursion is checked by an iterative validator, so the verdict (2 or 3) does not
depend on Python's recursion limit. Each check is one linear pass in C or NumPy.
"""
from __future__ import annotations

import json
import math
import re
import sys
from typing import Any

import numpy as np

MAX_STRUCTURAL = 1 << 20
_STRUCTURAL = (ord('"'), ord(","), ord("["), ord("{"))
MAX_DEPTH = 64
MAX_NUMBER_CHARS = 100
INT_MIN, INT_END = -(1 << 63), 1 << 64


class JsonRuleError(ValueError):
    """A rule of the dialect is broken: ``rule`` in count, syntax, depth, number, duplicate."""

    def __init__(self, rule: str, value: Any = None) -> None:
        self.rule = rule
        self.value = value
        super().__init__(rule)


class _Constant(ValueError):
    pass


def structural_count(text: str | bytes, stop: int | None = None) -> int:
    """How many characters of ``text`` are ``"``, ``,``, ``[`` or ``{``.

    With ``stop``, counting ends (returning a number > ``stop``) as soon as the count passes
    ``stop``: a hostile 100 MB text is refused after reading its first megabytes. Counted in
    1 MiB chunks with NumPy (UTF-8 never puts these bytes inside a multi-byte character).
    """
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    a = np.frombuffer(data, dtype=np.uint8)
    n, step = 0, 1 << 20
    for i in range(0, a.size, step):
        c = a[i:i + step]
        n += sum(int(np.count_nonzero(c == b)) for b in _STRUCTURAL)
        if stop is not None and n > stop:
            return n
    return n


def _reject_constant(name: str) -> Any:
    raise _Constant(name)


def loads(text: str, *, counted: bool = False) -> Any:
    """Parse ``text`` under the dialect rules above; ``JsonRuleError`` names the first broken rule.

    ``counted=True``: the caller has already applied rule 1 (e.g. to the bytes the text came from).
    """
    if not counted:
        n = structural_count(text, MAX_STRUCTURAL)
        if n > MAX_STRUCTURAL:
            raise JsonRuleError("count", n)
    found: dict[str, Any] = {}

    def parse_int(s: str) -> int:
        if len(s) > 21 or not INT_MIN <= int(s) < INT_END:  # 21 chars: '-' and 20 digits
            found.setdefault("number", s)
            return 0
        return int(s)

    def parse_float(s: str) -> float:
        if len(s) > MAX_NUMBER_CHARS:
            found.setdefault("number", s)
            return 0.0
        v = float(s)
        if not math.isfinite(v):
            found.setdefault("number", s)
            return 0.0
        return v

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        d = dict(items)
        if len(d) != len(items) and "duplicate" not in found:
            seen: set[str] = set()
            for k, _ in items:
                if k in seen:
                    found["duplicate"] = k
                    break
                seen.add(k)
        return d

    def parse() -> Any:  # a second parse of the same text meets its literals and objects in the same order
        return json.loads(text, parse_int=parse_int, parse_float=parse_float, parse_constant=_reject_constant,
                          object_pairs_hook=pairs)

    try:
        try:
            doc = parse()
        except RecursionError:
            if not _valid_syntax(text) or unpaired_surrogate(text):
                raise JsonRuleError("syntax") from None
            if text_depth(text) > MAX_DEPTH:
                raise JsonRuleError("depth") from None
            # a shallow text met a deep call stack: parse it again with room for its depth
            limit = sys.getrecursionlimit()
            sys.setrecursionlimit(limit + 4 * MAX_DEPTH)
            try:
                doc = parse()
            finally:
                sys.setrecursionlimit(limit)
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity
        if isinstance(exc, JsonRuleError):
            raise
        raise JsonRuleError("syntax") from None
    # the syntax rule's Unicode strings, then depth, as properties of the text: without a repeated
    # key the value holds every string and container of the text, so one walk of it decides both;
    # with one, the dropped value may have held them, so the text itself is scanned (spec 4.1.1)
    if "duplicate" in found:
        bad, deepest = unpaired_surrogate(text), text_depth(text)
    else:
        deepest, bad = _scan(doc)
    if bad:
        raise JsonRuleError("syntax")
    if deepest > MAX_DEPTH:
        raise JsonRuleError("depth")
    if "number" in found:
        raise JsonRuleError("number", found["number"])
    if "duplicate" in found:
        raise JsonRuleError("duplicate", found["duplicate"])
    return doc


def depth(doc: Any) -> int:
    """Nesting depth of a parsed value: 0 for a scalar, 1 for a flat array or object (iterative)."""
    if not isinstance(doc, (list, dict)):
        return 0
    deepest, stack = 0, [(doc, 1)]
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > MAX_DEPTH:
            return deepest
        for child in (v.values() if isinstance(v, dict) else v):
            if isinstance(child, (list, dict)):
                stack.append((child, d + 1))
    return deepest


def _not_unicode(s: str) -> bool:
    """Whether a parsed string holds a surrogate code point: Python's decoder joins an escaped
    pair into one code point, so only an unpaired escape (or a raw surrogate) leaves one.
    (``isascii`` is O(1): a flag of the string.)"""
    return not s.isascii() and _has_raw_surrogate(s)


def _scan(doc: Any) -> tuple[int, bool]:
    """(depth, whether some key or string is not Unicode text) of a parsed value, in one
    iterative walk of all of it."""
    if not isinstance(doc, (list, dict)):
        return 0, isinstance(doc, str) and _not_unicode(doc)
    deepest, stack = 1, [(doc, 1)]
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if isinstance(v, dict):
            if any(_not_unicode(k) for k in v):
                return deepest, True
            v = v.values()
        for child in v:
            if isinstance(child, (list, dict)):
                stack.append((child, d + 1))
            elif isinstance(child, str) and _not_unicode(child):
                return deepest, True
    return deepest, False


_HIGH = np.zeros(256, dtype=bool)
_HIGH[[ord(c) for c in "89abAB"]] = True  # the 4th character of \uD800-\uDBFF
_LOW = np.zeros(256, dtype=bool)
_LOW[[ord(c) for c in "cdefCDEF"]] = True  # the 4th character of \uDC00-\uDFFF


def unpaired_surrogate(text: str) -> bool:
    """Whether a syntactically valid JSON ``text`` has a string that is not Unicode text: an
    escaped high surrogate (\\uD800-\\uDBFF) not followed at once by an escaped low one
    (\\uDC00-\\uDFFF), a low one not preceded by a high one, or a raw surrogate code point
    (spec 4.1.1 rule 4, I-JSON RFC 7493 2.1; serde_json, safetensors' parser, refuses them).

    One linear pass: escaped backslashes are dropped first (left to right, as a JSON parser
    reads them), so every backslash left starts an escape; then the positions of surrogate
    escapes are found with NumPy, and every high one must have a low one 6 characters later
    and every low one a high one 6 characters earlier.
    """
    if "\\ud" not in text and "\\uD" not in text:  # no surrogate escape (the common case)
        return not text.isascii() and _has_raw_surrogate(text)
    t = text.replace("\\\\", "")
    if _has_raw_surrogate(t):
        return True
    a = np.frombuffer(t.encode("utf-8"), dtype=np.uint8)
    highs, lows, step = [], [], 1 << 20
    for i in range(0, a.size - 3, step):  # an escape starts at i (its 4th character at i + 3)
        c = a[i:i + step + 3]
        n = c.size - 3
        p = np.flatnonzero((c[:n] == 92) & (c[1:n + 1] == 117) & ((c[2:n + 2] | 32) == 100))  # \u[dD]
        if p.size:
            fourth = c[p + 3]
            highs.append(p[_HIGH[fourth]] + i)
            lows.append(p[_LOW[fourth]] + i)
    H = np.concatenate(highs) if highs else np.zeros(0, dtype=np.int64)
    L = np.concatenate(lows) if lows else np.zeros(0, dtype=np.int64)
    return not (H.size == L.size and np.array_equal(H + 6, L))


def _has_raw_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


_BRACKETS_ONLY = bytes(b for b in range(256) if b not in b"[]{}")


def text_depth(text: str) -> int:
    """Nesting depth of a syntactically valid JSON ``text``: 0 for a scalar, 1 for a flat array or
    object. Every container of the text counts, the value of a repeated key too (spec 4.1.1 rule 5).

    Linear passes in C: escaped backslashes and escaped quotes are dropped (so every quote left
    opens or closes a string), the text between quotes is cut out, and the running sum of the
    brackets left (at most 2^21 after rule 2) is taken with NumPy.
    """
    if "\\" in text:
        text = text.replace("\\\\", "").replace('\\"', "")
    outside = "".join(text.split('"')[0::2])  # outside strings: ASCII only in valid JSON
    brackets = outside.encode("ascii", "replace").translate(None, _BRACKETS_ONLY)
    if not brackets:
        return 0
    a = np.frombuffer(brackets, dtype=np.uint8)
    return int(np.cumsum(np.where((a == 91) | (a == 123), 1, -1), dtype=np.int64).max())


_WS = re.compile(r"[ \t\n\r]*")
_STRING = re.compile(r'"[^"\\\x00-\x1f]*(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})[^"\\\x00-\x1f]*)*"')
_SCALAR = re.compile(r'"[^"\\\x00-\x1f]*(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})[^"\\\x00-\x1f]*)*"'
                     r"|-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|true|false|null")


def _after_key(text: str, pos: int) -> int:
    """The position after an object key, its colon and white space; -1 when there is none."""
    m = _STRING.match(text, pos)
    if m is None:
        return -1
    pos = _WS.match(text, m.end()).end()
    if pos >= len(text) or text[pos] != ":":
        return -1
    return _WS.match(text, pos + 1).end()


def _valid_syntax(text: str) -> bool:
    """RFC 8259 syntax check without recursion (for texts too deep for the C scanner)."""
    pos, n = _WS.match(text, 0).end(), len(text)
    stack: list[str] = []  # '[' or '{'
    expect_value = True
    while True:
        if expect_value:
            if pos < n and text[pos] in "[{":
                opener = text[pos]
                pos = _WS.match(text, pos + 1).end()
                closer = "]" if opener == "[" else "}"
                if pos < n and text[pos] == closer:  # empty container
                    pos += 1
                    expect_value = False
                    continue
                stack.append(opener)
                if opener == "{":
                    pos = _after_key(text, pos)
                    if pos < 0:
                        return False
                continue
            m = _SCALAR.match(text, pos)
            if m is None:
                return False
            pos = m.end()
            expect_value = False
            continue
        pos = _WS.match(text, pos).end()
        if not stack:
            return pos == n
        c = text[pos] if pos < n else ""
        if c == ",":
            pos = _WS.match(text, pos + 1).end()
            if stack[-1] == "{":
                pos = _after_key(text, pos)
                if pos < 0:
                    return False
            expect_value = True
        elif c == ("]" if stack[-1] == "[" else "}"):
            stack.pop()
            pos += 1
        else:
            return False


__all__ = ["loads", "depth", "text_depth", "unpaired_surrogate", "structural_count", "JsonRuleError", "MAX_STRUCTURAL", "MAX_DEPTH",
           "MAX_NUMBER_CHARS", "INT_MIN", "INT_END"]
