"""Hostile PEFT checkpoints and --dims files (issue 23, findings 8 and 9): every case raises
ConversionError, one line, with work bounded before parsing or matching (NumPy only, no torch).

Before the fix these escaped as RecursionError, ValueError, OverflowError, or matched with
backtracking ``re`` for seconds to hours. Sizes are chosen so that a backtracking matcher
would take seconds, not forever; the bound itself is structural (vera_ref.peft_regex)."""
import json
import os
import re

import numpy as np
import pytest

from vera_ref import container, peft_regex
from vera_ref.errors import ConversionError
from vera_ref.peft_interop import peft_selects, peft_to_adapter, read_dims

GOOD = {"peft_type": "VERA", "r": 2, "target_modules": ["q"], "projection_prng_key": 0, "save_projection": False,
        "bias": "none"}
A40 = "a" * 28 + "!"  # the module name the regex bombs meet: 28 a's, then no match


def _nest(n: int, inner: str = "1") -> str:
    return "[" * n + inner + "]" * n


def _write(d, config_text: str, names=("enc.q",), r=2, out=3):
    d.mkdir(exist_ok=True)
    (d / "adapter_config.json").write_text(config_text)
    tensors = {}
    for n in names:
        tensors[f"base_model.model.{n}.vera_lambda_d"] = (np.ones(r, np.float32), "F32")
        tensors[f"base_model.model.{n}.vera_lambda_b"] = (np.ones(out, np.float32), "F32")
    container.write(d / "adapter_model.safetensors", {"format": "pt"}, tensors)
    return d


def _cfg(**change) -> str:
    return json.dumps({**GOOD, **change})


def _raw(key: str, value_text: str) -> str:
    """GOOD with ``key`` set to the literal JSON text ``value_text`` (NaN, 400 digits, deep nesting)."""
    body = json.dumps({k: v for k, v in GOOD.items() if k != key})
    return body[:-1] + f', "{key}": {value_text}}}'


BOMBS = [r"(a|aa)+$", r"(a+)+$", r"(a*)*b", r"(.*a){20}", r"(a|a?)+$", r"(?:a+){2,}$", r"(\w+\d*)+$",
         r"((a|b)*)*c", r"(a?){28}a{28}", r"(.*)*!x"]

# (id, adapter_config.json text, module names in the weights file, expected message part)
CASES = [
    # nesting, in every field and outside them
    *[(f"nested-{k}-{n}", _raw(k, _nest(n)), ("enc.q",), "nested deeper than 64 levels")
      for k in ("target_modules", "modules_to_save", "layers_to_transform", "x_unknown") for n in (65, 1000, 100_000)],
    ("nested-object-1000", '{"peft_type": "VERA", "a": ' + '{"b": ' * 1000 + "1" + "}" * 1001, ("enc.q",),
     "nested deeper than 64 levels"),
    ("nested-unclosed-100000", _raw("x", "[" * 100_000), ("enc.q",), "not valid JSON"),
    # numbers
    *[(f"d_initial-{v[:12]}", _raw("d_initial", v), ("enc.q",), msg) for v, msg in [
        ("NaN", "not valid JSON"), ("Infinity", "not valid JSON"), ("-Infinity", "not valid JSON"),
        ("1" * 400, "out of range"), ("1." + "1" * 400, "out of range"), ("1e400", "out of range"),
        ("-1e400", "out of range"), ("1e-400" + "0" * 100, "out of range"), ("1e300", "not finite in the vectors"),
        ("3.5e38", "not finite in the vectors"), ('"0.1"', "must be a finite number"), ("true", "finite number"),
        ("null", "finite number"), ("[0.1]", "finite number")]],
    *[(f"dropout-{v[:12]}", _raw("vera_dropout", v), ("enc.q",), msg) for v, msg in [
        ("NaN", "not valid JSON"), ("9" * 400, "out of range"), ("1.5", "vera_dropout must be in"),
        ("-0.5", "vera_dropout must be in")]],
    *[(f"r-{v[:12]}", _raw("r", v), ("enc.q",), msg) for v, msg in [
        ("1" * 400, "out of range"), (str(1 << 64), "out of range"), ("-1", "r must be a positive integer"),
        ("2.0", "r must be a positive integer"), ("1e400", "out of range")]],
    *[(f"key-{v[:12]}", _raw("projection_prng_key", v), ("enc.q",), msg) for v, msg in [
        ("1" * 400, "out of range"), (str(1 << 64), "out of range"), ("-1", "projection_prng_key must be"),
        ("NaN", "not valid JSON")]],
    # regular-expression bombs in every field that takes one (module names from the same checkpoint)
    *[(f"bomb-target-{i}", _cfg(target_modules=p), (A40,), "do not select this module") for i, p in enumerate(BOMBS)],
    *[(f"bomb-exclude-{i}", _cfg(target_modules=["q"], exclude_modules=p), (A40, "enc.q"), "do not select")
      for i, p in enumerate(BOMBS[:4])],
    *[(f"bomb-save-{i}", _cfg(target_modules=[A40], modules_to_save=[p]), (A40 + ".b",), "do not select")
      for i, p in enumerate(BOMBS[:3])],
    *[(f"bomb-layers-{i}", _cfg(target_modules=["q"], layers_to_transform=[0], layers_pattern=p),
       ("x." + "a" * 28 + ".q",), "do not select") for i, p in enumerate(BOMBS[:3])],
    # patterns too big, too deep or too repetitive to compile
    ("regex-count-2^32", _cfg(target_modules="a{4294967296}"), ("enc.q",), "not a usable regular expression"),
    ("regex-count-huge", _cfg(target_modules="a{99999999999999999999}"), ("enc.q",), "regular expression"),
    ("regex-count-product", _cfg(target_modules="(?:(?:a{1000}){1000}){1000}"), ("enc.q",), "automaton states"),
    ("regex-groups-2000-nested", _cfg(target_modules="(" * 2000 + "a" + ")" * 2000), ("enc.q",), "nests groups"),
    ("regex-groups-2000-flat", _cfg(target_modules="(a)" * 2000), ("enc.q",), "do not select"),
    ("regex-classes-nested", _cfg(target_modules="(?:" * 500 + "a" + ")" * 500), ("enc.q",), "nests groups"),
    ("regex-1MB", _cfg(target_modules="a" * 1_000_000), ("enc.q",), "characters long"),
    ("regex-1MB-alternation", _cfg(target_modules="|".join(["a"] * 400_000)), ("enc.q",), "characters long"),
    ("regex-backref", _cfg(target_modules=r"(e)nc\.q\1"), ("enc.q",), "groupref"),
    ("regex-conditional", _cfg(target_modules=r"(e)?(?(1)nc\.q|x)"), ("enc.q",), "groupref_exists"),
    ("regex-atomic", _cfg(target_modules=r"(?>enc)\.q"), ("enc.q",), "atomic_group"),
    ("regex-possessive", _cfg(target_modules=r"enc++\.q"), ("enc.q",), "possessive_repeat"),
    ("regex-lookbehind-variable", _cfg(target_modules=r"(?<=e+)nc\.q"), ("enc.q",), "look-behind"),
    ("regex-invalid-paren", _cfg(target_modules="enc.(q"), ("enc.q",), "not a valid regular expression"),
    ("regex-invalid-class", _cfg(target_modules="[enc.q"), ("enc.q",), "not a valid regular expression"),
    ("regex-invalid-repeat", _cfg(target_modules="a**"), ("enc.q",), "not a valid regular expression"),
    ("regex-duplicate-name", _cfg(target_modules="(?P<x>a)(?P<x>b)"), ("enc.q",), "not a valid regular"),
    ("regex-bad-escape", _cfg(target_modules=r"\q"), ("enc.q",), "not a valid regular expression"),
    ("regex-save-invalid", _cfg(modules_to_save=["(("]), ("enc.q",), "not a valid regular expression"),
    ("regex-exclude-invalid", _cfg(exclude_modules="(("), ("enc.q",), "not a valid regular expression"),
    ("regex-layers-invalid", _cfg(layers_to_transform=[0], layers_pattern="(("), ("x.enc.0.q",), "not a valid"),
    # types and shapes
    ("target-dict", _cfg(target_modules={"q": 1}), ("enc.q",), "must be a string or a list"),
    ("target-nested-list", _cfg(target_modules=[["q"]]), ("enc.q",), "must be a string or a list"),
    ("target-null-entry", _cfg(target_modules=[None]), ("enc.q",), "must be a string or a list"),
    ("target-missing", json.dumps({k: v for k, v in GOOD.items() if k != "target_modules"}), ("enc.q",),
     "target_modules is missing"),
    ("target-all-linear", _cfg(target_modules="all-linear"), ("enc.q",), "all-linear"),
    ("layers-float", _cfg(layers_to_transform=1.5), ("enc.q",), "layers_to_transform must be"),
    ("layers-pattern-int", _cfg(layers_to_transform=0, layers_pattern=3), ("enc.q",), "layers_pattern must be"),
    ("exclude-int", _cfg(exclude_modules=3), ("enc.q",), "exclude_modules must be"),
    ("save-str", _cfg(modules_to_save="head"), ("enc.q",), "modules_to_save must be"),
    ("peft-type-lora", _cfg(peft_type="LORA"), ("enc.q",), "not 'VERA'"),
    ("peft-type-nested", _raw("peft_type", _nest(60, '"VERA"')), ("enc.q",), "not 'VERA'"),
    # JSON text itself
    ("duplicate-key", '{"peft_type": "VERA", "r": 2, "r": 3}', ("enc.q",), "appears twice"),
    ("not-utf8", '{"peft_type": "VERA", "x": "\udcff"}', ("enc.q",), "not UTF-8"),
    ("trailing-garbage", _cfg() + "x", ("enc.q",), "not valid JSON"),
    ("comment", "// c\n" + _cfg(), ("enc.q",), "not valid JSON"),
    ("single-quotes", _cfg().replace('"', "'"), ("enc.q",), "not valid JSON"),
    ("empty", "", ("enc.q",), "not valid JSON"),
    ("top-level-list", "[1]", ("enc.q",), "peft_type is None"),
    ("top-level-string", '"VERA"', ("enc.q",), "peft_type is None"),
    ("too-big", " " * (1 << 20) + "{}", ("enc.q",), "larger than 1048576 bytes"),
]


@pytest.mark.parametrize("text, names, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_config_is_one_conversion_error(tmp_path, text, names, message):
    d = tmp_path / "p"
    d.mkdir()
    if "\udcff" in text:
        (d / "x").write_text("")
        text_bytes = text.encode("utf-8", "surrogateescape")
    else:
        text_bytes = text.encode()
    _write(d, "", names=names)
    (d / "adapter_config.json").write_bytes(text_bytes)
    with pytest.raises(ConversionError) as info:
        peft_to_adapter(d, in_features=4)
    msg = str(info.value)
    assert type(info.value) is ConversionError and message in msg, msg
    assert "\n" not in msg and len(msg) < 600


def test_the_table_has_the_issues_size():
    assert len(CASES) >= 85


def test_a_bomb_is_refused_or_answered_without_backtracking():
    """The automaton's work is bounded by its states x the text: (a|aa)+$ on 4,000 a's and a '!'
    (astronomical for backtracking) is answered, and a budget-breaking match is a RegexError."""
    assert peft_regex.fullmatch(r"(a|aa)+$", "a" * 4000) is True
    assert peft_regex.fullmatch(r"(a|aa)+$", "a" * 4000 + "!") is False
    big = "(?:" + "|".join(f"a{{{i}}}" for i in range(1, 400)) + ")*!"  # ~80,000 states
    with pytest.raises(peft_regex.RegexError, match="automaton steps"):
        peft_regex.fullmatch(big, "a" * 200)


# patterns PEFT users write (and ours), against names: the automaton answers what re answers
PATTERNS = [r".*\.(q_proj|v_proj)$", r"^(?!.*vision).*(q_proj|k_proj)", r".*decoder.*(SelfAttention|EncDecAttention).*(q|v)$",
            r"(?i)Q_PROJ", r".*\b(query|value)\b", r"[a-z_.]+\d\.\w+", r"(?<=\.)q", r".*(?<=layer\.)\d+.*",
            r".*?a{2,3}?b*", r".*\d{1,2}\..*", r"[^.]+\.[^.]+", r"(?:a|b)*c?", r"(x|)+", r"a$", r"a\Z", r"^a", r"(?s).",
            r".", r"(?m)a$\n?b", r"\Bq", r"[\s\S]*proj", r"(?a)\w+", r"\w+", r"[\d.]+", r"(?:(?:a)?)*", r"(.)", "",
            r"model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj", r"(?!model).*", r"(?=.*q).*v.*", r"x(?<!y)z",
            r"(?i:ab)C", r"(?:model\.l\.0\.q|model\.l\.0\.v|model\.l\.1\.q)", r"(?x) a . q  # comment"]
TEXTS = ["model.layers.0.self_attn.q_proj", "q_proj", "vision.q_proj", "decoder.block.0.layer.1.EncDecAttention.q",
         "Q_PROJ", "query", "a.query", "aab", "aaab", "", "a", "a\n", "\n", "b", "a\nb", "layer.12.x", "xz", "xyz",
         "abC", "ABC", "abc", "model.layers.3.mlp.up_proj", "\u00e9", "a.q", "..", "model.l.0.v", "model.l.0", "\u00e91"]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_automaton_answers_as_re(pattern):
    for text in TEXTS:
        for full in (True, False):
            expected = (re.fullmatch if full else re.match)(pattern, text) is not None
            assert peft_regex.compile_untrusted(pattern).match(text, full=full) == expected, (pattern, text, full)


def test_layers_pattern_index_as_peft():
    cfg = {"target_modules": ["q"], "layers_to_transform": [1], "layers_pattern": "layer"}
    assert peft_selects(cfg, "enc.layer.1.q") and not peft_selects(cfg, "enc.layer.0.q")
    assert peft_selects({**cfg, "layers_pattern": "l.*r"}, "enc.layer.1.q")
    with pytest.raises(ConversionError, match="several layer indexes"):  # PEFT's answer would depend on order
        peft_selects({**cfg, "layers_pattern": "(?:x|x\\.0\\.x)"}, "x.0.x.1.q")


@pytest.mark.parametrize("text, message", [
    (_nest(100_000), "nested deeper than 64 levels"),
    ('{"a": ' + _nest(1000) + "}", "nested deeper than 64 levels"),
    ('{"a": [1, 1e400]}', "out of range"),
    ('{"a": [NaN, 1]}', "not valid JSON"),
    ('{"a": [1, ' + "9" * 400 + "]}", "out of range"),
    ('{"a": [1, 2], "a": [1, 2]}', "appears twice"),
    ('{"a": [1, 2.5]}', "two positive integers"),
    ('{"a": [0, 2]}', "two positive integers"),
    ('{"a": [1, 2, 3]}', "two positive integers"),
    ('{"a": "1x2"}', "two positive integers"),
    ("[]", "must be a JSON object"),
    ("{}", "must be a JSON object"),
])
def test_hostile_dims_file(tmp_path, text, message):
    p = tmp_path / "dims.json"
    p.write_text(text)
    with pytest.raises(ConversionError) as info:
        read_dims(p)
    assert type(info.value) is ConversionError and message in str(info.value)


def test_dims_and_in_features_given_in_python_are_checked(tmp_path):
    d = _write(tmp_path / "p", _cfg())
    for dims in ({"enc.q": "ab"}, {"enc.q": (1.5, 3)}, {"enc.q": (True, 3)}, [("enc.q", (4, 3))]):
        with pytest.raises(ConversionError, match="dims"):
            peft_to_adapter(d, dims=dims)
    with pytest.raises(ConversionError, match="in_features must be a positive integer"):
        peft_to_adapter(d, in_features=float("nan"))
    assert peft_to_adapter(d, dims={"enc.q": (4, 3)}).config.modules[0].in_features == 4


def test_missing_or_wrong_folder_says_so(tmp_path):
    with pytest.raises(ConversionError, match="no such folder"):
        peft_to_adapter(tmp_path / "nope", in_features=4)
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConversionError, match="not a folder"):
        peft_to_adapter(tmp_path / "f", in_features=4)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConversionError, match="no adapter_config.json in this folder"):
        peft_to_adapter(tmp_path / "empty", in_features=4)
    d = _write(tmp_path / "p", _cfg())
    os.remove(d / "adapter_config.json")
    (d / "adapter_config.json").mkdir()
    with pytest.raises(ConversionError, match="not a regular file"):
        peft_to_adapter(d, in_features=4)
    if hasattr(os, "mkfifo"):
        os.rmdir(d / "adapter_config.json")
        os.mkfifo(d / "adapter_config.json")  # must not block
        with pytest.raises(ConversionError, match="not a regular file"):
            peft_to_adapter(d, in_features=4)


def test_one_conversion_shares_one_step_budget(tmp_path, monkeypatch):
    """A pattern that costs each module name a share of the per-match budget cannot multiply it by the
    number of names: the conversion's matches share one Budget, then one ConversionError. (The budget
    is lowered here to keep the test fast; the default is peft_regex.MAX_TOTAL_STEPS.)"""
    pattern = "(?:" + "|".join(f"a{{{i}}}" for i in range(1, 12)) + r")*\d+"  # every name matches
    names = [f"{'a' * 12}{i}" for i in range(20)]
    budget = peft_regex.Budget(10**9)
    for n in names[:2]:
        assert peft_regex.compile_untrusted(pattern).match(n, full=True, budget=budget)
    per_name = (budget.limit - budget.steps_left) // 2
    monkeypatch.setattr(peft_regex, "MAX_TOTAL_STEPS", per_name * 10)
    assert per_name < peft_regex.MAX_STEPS
    d = _write(tmp_path / "p", _cfg(target_modules=pattern), names=names)
    with pytest.raises(ConversionError, match=f"more than the {per_name * 10} automaton steps one conversion may use"):
        peft_to_adapter(d, in_features=4)
    monkeypatch.setattr(peft_regex, "MAX_TOTAL_STEPS", per_name * 40)
    assert len(peft_to_adapter(d, in_features=4).config.modules) == 20
