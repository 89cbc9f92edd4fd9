"""Kill-tests for vera_ref/jsontext.py (spec 4.1.1) and vera_ref/seed.py (spec 1.3), issue 15.

Every limit of the dialect at its exact boundary: accepted at the limit, refused one past it, with
the rule and the quoted value. The iterative syntax checker (used for texts too deep for Python's
C scanner) is compared with Python's own ``json`` parser, an independent implementation of RFC 8259.
"""
import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from vera_ref import jsontext
from vera_ref.errors import ProjectionError
from vera_ref.seed import SEED_LIMIT, check_seed


def _rule(text, **kw):
    with pytest.raises(jsontext.JsonRuleError) as err:
        jsontext.loads(text, **kw)
    return err.value.rule, err.value.value


# --- rule 2: the structural count (spec 4.1.1 item 2) ---------------------------------------

def test_the_limit_is_two_to_the_twenty():
    assert jsontext.MAX_STRUCTURAL == 1_048_576 and jsontext.MAX_DEPTH == 64 and jsontext.MAX_NUMBER_CHARS == 100
    assert (jsontext.INT_MIN, jsontext.INT_END) == (-(2**63), 2**64)


def test_structural_count_at_the_limit_is_accepted_and_one_past_refused():
    k = jsontext.MAX_STRUCTURAL - 1  # "[" + "0," * k + "0]": 1 + k structural characters
    at = "[" + "0," * k + "0]"
    assert jsontext.structural_count(at) == 2**20
    assert jsontext.loads(at) == [0] * (k + 1)
    past = "[" + "0," * (k + 1) + "0]"
    assert _rule(past) == ("count", 2**20 + 1)
    # counted=True: the caller applied rule 1 already; the text is then parsed as it is
    assert len(jsontext.loads(past, counted=True)) == k + 2


def test_every_structural_character_counts_inside_strings_too():
    # spec 4.1.1 item 2: '"', ',', '[' and '{' anywhere; ']', '}', ':' and other bytes do not count
    assert jsontext.structural_count('{"a,[{":[1,2]}') == 8
    assert jsontext.structural_count(']}: \t0aZ\\') == 0
    assert jsontext.structural_count(b'"",[{') == 5
    assert jsontext.structural_count("\u00e9\u4e2d\U0001F600,") == 1
    assert jsontext.structural_count("\ud800,") == 1  # lone surrogates are counted, not an error


def test_count_crosses_the_read_chunks_exactly():
    # exactly 2^20 structural bytes fill the first 1 MiB chunk; one more lies in the second chunk
    text = "," * (2**20) + " ,"
    assert jsontext.structural_count(text) == 2**20 + 1
    assert jsontext.structural_count(text, 2**20) == 2**20 + 1
    assert _rule(text) == ("count", 2**20 + 1)
    # the stop is strict: a text with exactly `stop` structural characters is counted to its end
    assert jsontext.structural_count("," * 10 + "x" * 2**20 + ",", 11) == 11
    assert jsontext.structural_count("," * 10 + "x" * 2**20 + ",", 10) == 11


def test_count_stops_after_the_chunk_that_passes_the_stop():
    # spec 4.1.1: a hostile text is refused after reading at most its first megabytes
    text = "," * (3 * 2**20)
    assert jsontext.structural_count(text, 0) == 2**20
    assert jsontext.structural_count(text, 2**20) == 2 * 2**20
    assert jsontext.structural_count(text) == 3 * 2**20


# --- rule 4: syntax ------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["", " ", "[", "]", "{", '{"a"}', '{"a":}', '{"a":1', "[1 2]", "[1,]", "01",
                                  "1.", ".5", "-", "+1", "tru", "nulls", '"\\x"', '"a\nb"', "[] []", "{1:2}",
                                  "NaN", "Infinity", "-Infinity", '{"a":1}x', "/* */1"])
def test_syntax_errors(text):
    assert _rule(text) == ("syntax", None)


@pytest.mark.parametrize("text, value", [("1", 1), ("-0", 0), ("1.5", 1.5), ("-2.5e-3", -2.5e-3), ("true", True),
                                         ("null", None), ('"x"', "x"), ("[]", []), ("{}", {}),
                                         (' \t\r\n[1.25, {"a": [2.0]}] \n', [1.25, {"a": [2.0]}])])
def test_values_parse_to_python(text, value):
    got = jsontext.loads(text)
    assert got == value and type(got) is type(value)


# --- rule 5: depth -------------------------------------------------------------------------

@pytest.mark.parametrize("make", [lambda n: "[" * n + "]" * n,
                                  lambda n: '{"k":' * (n - 1) + "{}" + "}" * (n - 1),
                                  lambda n: "[" * (n - 1) + '{"a":1}' + "]" * (n - 1)])
def test_depth_at_the_limit_and_one_past(make):
    doc = jsontext.loads(make(64))
    assert jsontext.depth(doc) == 64
    assert _rule(make(65)) == ("depth", None)


def test_depth_counts_every_branch():
    assert jsontext.depth(5) == 0 and jsontext.depth("x") == 0
    assert jsontext.depth([]) == 1 and jsontext.depth({}) == 1
    assert jsontext.depth([1, [2], {"a": [[3]]}, [[]]]) == 4
    assert jsontext.depth({"a": 1, "b": {"c": [[]]}, "d": []}) == 4
    deep = [[[]]]
    assert jsontext.depth([1, {"x": deep}, 2]) == 5


def test_depth_is_exact_up_to_the_limit_and_stops_past_it():
    nested = []
    for _ in range(63):
        nested = [nested]
    assert jsontext.depth(nested) == 64
    assert jsontext.depth([nested]) == 65
    assert jsontext.depth([[nested]]) == 65  # it stops counting as soon as the limit is passed


@pytest.mark.parametrize("inner, rule", [
    ("1", "depth"), ('{"a":[1,{"b":null}]}', "depth"), ("[1,2]", "depth"), ('{"a":{}}', "depth"),
    ('"s\\u00e9\\n"', "depth"), ("-1.5e+3", "depth"), ("true", "depth"), ("false", "depth"), ("null", "depth"),
    (' { "a" : 1 , "b" : [ ] } ', "depth"), ('{"a":1,"a":2}', "depth"),
    ('{"a" 1}', "syntax"), ('{"a":1,}', "syntax"), ("[1,]", "syntax"), ("{,}", "syntax"), ('{"a":1 "b":2}', "syntax"),
    ("{1:2}", "syntax"), ('{"a":1,2}', "syntax"), ('{"a"', "syntax"), ("tru", "syntax"), ("01", "syntax"),
    ('"\\x"', "syntax"), ("[1 2]", "syntax"), ("NaN", "syntax"), ('{"a":1]', "syntax"), ("[1}", "syntax"),
    ("", "depth"), (",", "syntax"),
])
def test_texts_too_deep_for_the_c_scanner(inner, rule):
    # 5,000 levels make Python's scanner raise RecursionError; the verdict comes from _valid_syntax
    text = "[" * 5000 + inner + "]" * 5000
    assert _rule(text) == (rule, None)


def test_too_deep_texts_with_errors_at_the_ends():
    assert _rule("[" * 5000 + "]" * 5000 + " ") == ("depth", None)
    assert _rule("[" * 5000 + "]" * 5000 + "]") == ("syntax", None)
    assert _rule("[" * 5000 + "]" * 5000 + "x") == ("syntax", None)
    assert _rule("[" * 5000 + "]" * 4999 + ",1]") == ("depth", None)
    assert _rule("[" * 5000 + "]" * 4999 + ",]") == ("syntax", None)
    assert _rule("[" * 5000 + "]" * 4999) == ("syntax", None)
    assert _rule('{"a":' * 5000 + "1" + "}" * 5000) == ("depth", None)
    assert _rule('{"a":' * 5000 + "1" + "}" * 4999 + ',"b":2}') == ("depth", None)
    assert _rule('{"a":' * 5000 + "1" + "}" * 4999 + ',"b"2}') == ("syntax", None)
    assert _rule('{"a":' * 5000 + "1" + "}" * 4999 + ",2}") == ("syntax", None)
    assert _rule('{"a":' * 5000 + "1" + "}" * 4999 + ',"b":}') == ("syntax", None)


# the iterative checker against Python's json (an independent RFC 8259 parser), on shallow texts

def _python_accepts(text):
    def reject(name):
        raise ValueError(name)
    try:
        json.loads(text, parse_constant=reject)
        return True
    except ValueError:
        return False


TOKENS = ["[", "]", "{", "}", ",", ":", " ", "\n", '"a"', '"b\\"c"', '"\\u00e9"', '"\\q"', '"x', "1", "-0.5e+3",
          "01", "1.", "true", "false", "null", "nul", "NaN", "x", "\t", "\r", '"\\ud800"', "-", "2E2", "0.0"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=14))
def test_valid_syntax_agrees_with_python_on_token_soup(tokens):
    text = "".join(tokens)
    assert jsontext._valid_syntax(text) == _python_accepts(text)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES, st.sampled_from([None, ", ", ": "]), st.integers(0, 10**6), st.integers(0, 2))
def test_valid_syntax_agrees_with_python_on_edited_documents(value, indent_sep, where, edit):
    text = json.dumps(value, separators=(", ", ": ") if indent_sep else (",", ":"), ensure_ascii=where % 2 == 0)
    if edit and text:
        i = where % len(text)
        text = text[:i] + text[i + 1:] if edit == 1 else text[:i] + text[i] + text[i:]
    assert jsontext._valid_syntax(text) == _python_accepts(text)


@pytest.mark.parametrize("text, ok", [
    ('{"a"', False), ('{"a" ', False), ('{"a":1,"b"', False), ('{"a":1, "b"  ', False), ('{"a" 1}', False),
    ('{"a":1,"b" 2}', False), ("{", False), ("{ ", False), ('{"a":1,', False), ("[1,", False), ("[", False),
    ('{"a":1}', True), ('{ "a" : 1 , "b" :2}', True), ("[1, 2]", True), ('{"a":{"b":{}}}', True),
])
def test_valid_syntax_at_the_end_of_the_text(text, ok):
    assert jsontext._valid_syntax(text) is ok
    assert _python_accepts(text) is ok
    deep = "[" * 5000 + text
    assert _rule(deep) == ("syntax", None)  # unclosed, whatever the verdict on text


# --- rule 6: numbers -----------------------------------------------------------------------

@pytest.mark.parametrize("literal, ok", [
    ("18446744073709551615", True), ("18446744073709551616", False),
    ("-9223372036854775808", True), ("-9223372036854775809", False),
    ("0", True), ("-0", True), ("1" + "0" * 30, False), ("-1" + "0" * 30, False),
])
def test_integer_literals_at_the_bounds(literal, ok):
    text = "[" + literal + "]"
    if ok:
        assert jsontext.loads(text) == [int(literal)]
    else:
        assert _rule(text) == ("number", literal)


@pytest.mark.parametrize("literal, ok", [
    ("0." + "1" * 98, True),          # 100 characters
    ("0." + "1" * 99, False),         # 101
    ("1" * 98 + "e0", True),          # 100, an exponent
    ("1" * 99 + "e0", False),
    ("-" + "1" * 97 + ".0", True),    # 100 with the sign
    ("-" + "1" * 98 + ".0", False),
    ("1.7976931348623157e308", True), ("1.7976931348623159e308", False), ("-1e309", False),
    ("4.9e-324", True), ("1e-400", True),  # underflow to 0 is finite
])
def test_other_number_literals_at_the_bounds(literal, ok):
    text = '{"n":' + literal + "}"
    if ok:
        assert jsontext.loads(text) == {"n": float(literal)}
    else:
        assert _rule(text) == ("number", literal)


def test_number_message_quotes_the_first_literal_in_text_order():
    assert _rule("[1e999, 18446744073709551616, 2e999]") == ("number", "1e999")
    assert _rule("[18446744073709551616, 1e999]") == ("number", "18446744073709551616")
    assert _rule('{"b":[' + "9" * 30 + '],"a":1e400}') == ("number", "9" * 30)
    # numbers (rule 6) are judged before duplicates (rule 7), depth (rule 5) before numbers
    assert _rule('{"a":1,"a":2,"b":1e400}') == ("number", "1e400")
    assert _rule("[" * 65 + "1e400" + "]" * 65) == ("depth", None)


# --- rule 7: duplicates --------------------------------------------------------------------

@pytest.mark.parametrize("text, key", [
    ('{"a":1,"a":1}', "a"),
    ('{"b":1,"a":1,"b":2,"a":2}', "b"),                 # the first repeated key within an object
    ('{"a":1,"b":2,"a":3,"b":4,"a":5}', "a"),
    ('{"x":{"y":1,"y":2},"z":1,"z":2}', "y"),           # the inner object ends first
    ('{"z":1,"z":2,"x":{"y":1,"y":2}}', "y"),
    ('[{"p":1,"p":2},{"q":1,"q":2}]', "p"),
    ('{"\\u0061":1,"a":2}', "a"),                       # after unescaping
])
def test_first_repeated_key_in_the_order_objects_end(text, key):
    assert _rule(text) == ("duplicate", key)


def test_no_duplicate_in_different_objects():
    assert jsontext.loads('{"a":{"a":1},"b":[{"a":2},{"a":3}]}') == {"a": {"a": 1}, "b": [{"a": 2}, {"a": 3}]}


def test_the_error_carries_rule_and_value():
    err = jsontext.JsonRuleError("number", "1e999")
    assert isinstance(err, ValueError) and str(err) == "number" and (err.rule, err.value) == ("number", "1e999")
    err = jsontext.JsonRuleError("syntax")
    assert err.value is None and err.args == ("syntax",)


# --- the seed rule (spec 1.3) ---------------------------------------------------------------

@pytest.mark.parametrize("seed, want", [(0, 0), (1, 1), (2**64 - 1, 2**64 - 1), (np.uint64(2**64 - 1), 2**64 - 1),
                                        (np.int64(7), 7), (np.uint8(255), 255), (np.int32(0), 0)])
def test_seed_in_range_is_returned_as_a_python_int(seed, want):
    got = check_seed(seed)
    assert got == want and type(got) is int
    assert SEED_LIMIT == 18446744073709551616


@pytest.mark.parametrize("seed, msg", [
    (2**64, "seed must be in [0, 2^64), got 18446744073709551616"),
    (2**65, "seed must be in [0, 2^64), got 36893488147419103232"),
    (-1, "seed must be in [0, 2^64), got -1"),
    (np.int64(-1), "seed must be in [0, 2^64), got -1"),
    (-(2**64), "seed must be in [0, 2^64), got -18446744073709551616"),
    (True, "seed must be an integer, got bool"),
    (False, "seed must be an integer, got bool"),
    (np.bool_(True), "seed must be an integer, got bool"),
    (1.0, "seed must be an integer, got float"),
    (np.float64(3), "seed must be an integer, got float64"),
    ("5", "seed must be an integer, got str"),
    (None, "seed must be an integer, got NoneType"),
])
def test_seed_refusals(seed, msg):
    with pytest.raises(ProjectionError, match=r"^" + __import__("re").escape(msg) + r"$"):
        check_seed(seed)
