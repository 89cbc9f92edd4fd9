"""Hostile input, round 2 (issue 23 findings 1-4): the reader's cost and verdicts as spec 4.1,
4.1.1 and 4.6 (1.2) fix them.

1. Every rule that needs no tensor bytes runs before any tensor byte is read; each tensor is
   read once, straight into its final array (spec 4.1). Measured with a file wrapper counting
   the bytes read and with tracemalloc (deterministic), not with a clock.
2. A document's own characters are counted (E4.6.10.2), after the header's escapes are decoded.
3. Depth is a property of the text: the value a repeated key drops counts.
4. Strings are Unicode text: an escaped unpaired surrogate is a syntax error, as in safetensors.
"""
import json
import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

from conftest import ROOT
from vera_ref import container, jsontext
from vera_ref.adapter import build_adapter, load_adapter, new_adapter, save_adapter, tensor_plan
from vera_ref.errors import AdapterFileError
from vera_ref.metadata import config_document, config_json, parse_config, parse_document

MiB = 1 << 20


def code_of(fn, *args, **kw):
    with pytest.raises(AdapterFileError) as err:
        fn(*args, **kw)
    return err.value.code


def _blob(header: dict | str, data: bytes = b"") -> bytes:
    text = header if isinstance(header, str) else json.dumps(header, separators=(",", ":"))
    raw = text.encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + data


def _adapter(extra: dict | None = None):
    ad = new_adapter([("q", 4, 4)], r=2, seed=1)
    ad.extra.update(extra or {})
    ad.config.extra_tensors = sorted(ad.extra)
    ad.config.projection_sha256 = ad.checksums()
    return ad


def _meta(ad, doc_text: str | None = None) -> dict:
    return {"vera_format": "vera-adapter", "vera_spec_version": "1.1",
            "vera_config": config_json(ad.config) if doc_text is None else doc_text}


def _sparse_file(path, data_bytes: int, listed: bool) -> int:
    """A valid adapter's header plus one F32 tensor of ``data_bytes`` bytes, named "big" and listed in
    extra_tensors (valid) or named "zz_big" and not listed (E4.6.23.3). The big tensor's bytes are a
    hole: the file is sparse, ``data_bytes`` long and a few KiB on disk. Returns the header's end."""
    ad = _adapter({"big": (np.zeros(1, np.float32), "float32")} if listed else None)
    plan = tensor_plan(ad)
    plan.pop("big", None)
    header, chunks, pos = {"__metadata__": _meta(ad)}, [], 0
    for name in sorted(plan):
        b = container.encode(*plan[name])
        header[name] = {"dtype": plan[name][1], "shape": list(plan[name][0].shape), "data_offsets": [pos, pos + len(b)]}
        chunks.append(b)
        pos += len(b)
    header["big" if listed else "zz_big"] = {"dtype": "F32", "shape": [data_bytes // 4],
                                              "data_offsets": [pos, pos + data_bytes]}
    blob = _blob(header, b"".join(chunks))
    with open(path, "wb") as f:
        f.write(blob)
        f.truncate(len(blob) + data_bytes)
    return len(blob) - pos


class Counting:
    """A file object that counts the bytes read through it (read and readinto)."""

    def __init__(self, f):
        self.f, self.bytes_read = f, 0

    def read(self, n=-1):
        b = self.f.read(n)
        self.bytes_read += len(b)
        return b

    def readinto(self, buf):
        n = self.f.readinto(buf)
        self.bytes_read += n or 0
        return n

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@pytest.fixture
def counted(monkeypatch):
    """Every file the reader opens, with a count of the bytes read from it."""
    opened = []
    real = container.open_regular

    def open_counted(path):
        f = Counting(real(path))
        opened.append(f)
        return f
    monkeypatch.setattr(container, "open_regular", open_counted)
    return opened


def traced(fn):
    tracemalloc.start()
    try:
        try:
            out = fn()
        except AdapterFileError as exc:
            out = exc
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# --- finding 1: no tensor byte before the rules that need none; each byte read once ----------------

@pytest.mark.parametrize("data_bytes", [4096, 2 << 30, 50 << 30])
def test_an_unlisted_tensor_is_refused_before_any_tensor_byte_is_read(tmp_path, counted, data_bytes):
    """Issue 23 finding 1: a header declaring one unlisted tensor over a sparse 2 GB / 50 GB data
    section was read (and copied) whole before E4.6.23.3: 12-21 s and 3.85 GB, or MemoryError."""
    p = tmp_path / "sparse.safetensors"
    header_end = _sparse_file(p, data_bytes, listed=False)
    assert os.path.getsize(p) > data_bytes
    err, peak = traced(lambda: load_adapter(p))
    assert isinstance(err, AdapterFileError) and (err.code, err.field) == ("E4.6.23.3", "zz_big")
    assert [f.bytes_read for f in counted] == [header_end]  # the header, not one byte of tensor data
    assert peak < 1 * MiB, peak


def test_validate_on_the_command_line_refuses_a_sparse_50_gb_file_with_little_memory(tmp_path):
    """The CLI path (``vera-ref validate``) reads through ``load_adapter``: one line, exit 1, and the
    process's whole peak RSS (Python and NumPy included) stays under 100 MB."""
    p = tmp_path / "sparse.safetensors"
    _sparse_file(p, 50 << 30, listed=False)
    if not os.path.exists("/proc/self/status"):
        pytest.skip("the peak RSS of one process is read from /proc/self/status (VmHWM), Linux only")
    # VmHWM: the high-water mark of this process's own memory since exec (getrusage's ru_maxrss
    # would also carry the RSS of the forked parent, pytest, across exec)
    script = ("import sys\nfrom vera_ref.cli import main\nrc = main(['validate', sys.argv[1]])\n"
              "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]\n"
              "print(hwm, rc)\n")
    out = subprocess.run([sys.executable, "-c", script, str(p)], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    assert out.stdout.splitlines(), (out.stdout, out.stderr)
    rss_kib, rc = (int(x) for x in out.stdout.splitlines()[-1].split())
    assert rc == 1 and len(out.stderr.splitlines()) == 1, out.stderr
    assert "zz_big: unexpected tensor (not a module vector, projection or listed extra tensor)" in out.stderr
    assert rss_kib < 100 * 1024, rss_kib


@pytest.mark.parametrize("dtype, code, itemsize", [("float32", "F32", 4), ("float16", "F16", 2),
                                                  ("float64", "F64", 8), ("bfloat16", "BF16", 2)])
def test_a_listed_tensor_is_read_once_into_its_final_array(tmp_path, counted, dtype, code, itemsize):
    """Issue 23 finding 1: a valid file's extra tensor cost twice its size (read, then decode copied).
    Now every byte of the file is read once and the traced peak is the tensor (float32 for BF16) plus
    less than 1 MiB; the values are the stored ones, at an odd (unaligned) offset too."""
    n = (8 * MiB) // itemsize
    values = (np.arange(n) % 251 - 125).astype(np.float32 if dtype == "bfloat16" else dtype)
    A, B = np.ones((2, 4), np.float32), np.ones((4, 2), np.float32)  # stored: no generator buffers in the peak
    ad = new_adapter([("q", 4, 4)], r=2, seed=None, generator="stored", stored={0: (A, B)})
    ad.extra["a.odd"] = (np.ones(1, np.float16), "float16")  # 2 bytes first: "big" starts unaligned
    ad.extra["big"] = (values, dtype)
    p = tmp_path / "big.safetensors"
    save_adapter(ad, p)
    back, peak = traced(lambda: load_adapter(p))
    assert np.array_equal(back.extra["big"][0], values) and back.extra["big"][1] == dtype
    assert [f.bytes_read for f in counted] == [os.path.getsize(p)]
    final = n * (4 if dtype == "bfloat16" else itemsize)
    assert final <= peak < final + 1 * MiB, (peak, final)


def test_a_shrinking_file_is_refused_for_the_tensor_that_runs_past_its_end(tmp_path, monkeypatch):
    """spec 4.1: a file cut while it is read gets E4.6.6.8 for the tensor whose bytes are missing."""
    ad = _adapter({"zz": (np.ones(1000, np.float32), "float32")})
    p = tmp_path / "a.safetensors"
    save_adapter(ad, p)
    real = container.read_header

    def read_then_cut(f, size):
        out = real(f, size)
        os.truncate(p, size - 100)
        return out
    monkeypatch.setattr(container, "read_header", read_then_cut)
    with pytest.raises(AdapterFileError) as err:
        load_adapter(p)
    assert (err.value.code, err.value.field) == ("E4.6.6.8", "zz")


# --- finding 2: the document's own characters are counted -------------------------------------------

def _escaped_document_file(path, n: int) -> None:
    """A header whose vera_config is n escaped '[' then n escaped ']': no structural byte in the
    header, n structural characters (and depth n) in the document."""
    head = b'{"__metadata__":{"vera_format":"vera-adapter","vera_spec_version":"1.1","vera_config":"'
    body = head + b"\\u005b" * n + b"\\u005d" * n + b'"}}'
    body += b" " * (-len(body) % 8)
    path.write_bytes(len(body).to_bytes(8, "little") + body)


def test_escaped_structure_counts_against_the_documents_bound(tmp_path):
    """Issue 23 finding 2: a 12.6 MB file whose document holds 1,048,577 '[' passed E4.6.4.2 and was
    parsed (E4.6.10.4 after seconds and a gigabyte at 99 MB); the document's count refuses it first,
    with memory a small multiple of the file (the header's bytes and text, the document's text)."""
    p = tmp_path / "esc.safetensors"
    _escaped_document_file(p, jsontext.MAX_STRUCTURAL + 1)
    raw = p.read_bytes()
    assert jsontext.structural_count(raw) < 20
    err, peak = traced(lambda: load_adapter(p))
    assert (err.code, err.field) == ("E4.6.10.2", "vera_config")
    assert peak < 3 * len(raw), (peak, len(raw))
    _escaped_document_file(p, 1000)  # under the bound: the same file is parsed, and is too deep
    assert code_of(load_adapter, p) == "E4.6.10.4"


def _with_count(k: int) -> str:
    """A document text with exactly ``k`` structural characters (commas in a provenance note)."""
    doc = config_document(_adapter().config)
    doc["provenance"] = {"note": ""}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return text.replace('"note":""', '"note":"' + "," * (k - jsontext.structural_count(text)) + '"')


def test_the_document_count_is_of_its_characters_not_the_headers_bytes():
    """E4.6.10.2 above 2^20 structural characters of the document, whether it is given alone or sits
    in a header that passed E4.6.4.2 because its commas are escapes there (\\u002c: six bytes, none
    structural)."""
    at, over = _with_count(jsontext.MAX_STRUCTURAL), _with_count(jsontext.MAX_STRUCTURAL + 1)
    assert parse_config(at).r == 2
    assert code_of(parse_config, over) == "E4.6.10.2"
    ad = _adapter()
    header = json.dumps({"__metadata__": _meta(ad, over), **_entries(ad)}, separators=(",", ":"))
    assert code_of(container.parse, _blob(header, _data(ad))) == "E4.6.4.2"  # commas as bytes: the header's count
    escaped = header.replace(",,", "\\u002c\\u002c")
    assert jsontext.structural_count(escaped) < 1000
    meta, tensors = container.parse(_blob(escaped, _data(ad)))
    assert meta["vera_config"] == over
    assert code_of(build_adapter, meta, tensors) == "E4.6.10.2"
    meta, tensors = container.parse(_blob(escaped.replace("\\u002c", "\\u0020", 1), _data(ad)))
    assert build_adapter(meta, tensors).config.provenance["note"].count(",") > 1_000_000  # one fewer: accepted


def _entries(ad) -> dict:
    plan, out, pos = tensor_plan(ad), {}, 0
    for name in sorted(plan):
        nbytes = len(container.encode(*plan[name]))
        out[name] = {"dtype": plan[name][1], "shape": list(plan[name][0].shape), "data_offsets": [pos, pos + nbytes]}
        pos += nbytes
    return out


def _data(ad) -> bytes:
    plan = tensor_plan(ad)
    return b"".join(container.encode(*plan[name]) for name in sorted(plan))


# --- finding 3: depth of the text, the dropped value of a repeated key included ---------------------

DEEP = "[" * 65 + "]" * 65


@pytest.mark.parametrize("text, rule", [
    ('{"x":' + DEEP + ',"x":1}', "depth"),
    ('{"x":1,"x":' + DEEP + '}', "depth"),
    ('{"a":{"x":{"y":' + DEEP + '},"x":2}}', "depth"),
    ('{"x":' + "[" * 5000 + "]" * 5000 + ',"x":1}', "depth"),  # past the C scanner's recursion
    ('{"x":"[[[[\\"[[[","x":[[' + "[" * 60 + "]" * 60 + ']]}', "duplicate"),  # brackets in strings do not nest
    ('{"x":[1e999],"x":1}', "number"),
    ('{"x":' + "[" * 63 + "]" * 63 + ',"x":1}', "duplicate"),  # 64 levels: the bound, not past it
])
def test_depth_is_measured_on_the_text(text, rule):
    with pytest.raises(jsontext.JsonRuleError) as err:
        jsontext.loads(text)
    assert err.value.rule == rule


def test_depth_before_duplicates_in_header_and_document():
    """Issue 23 finding 3: E4.6.4.7 / E4.6.10.6 were given where 4.1.1's order says E4.6.4.5 / E4.6.10.4."""
    assert code_of(container.parse, _blob('{"__metadata__":{},"x":' + DEEP + ',"x":1}')) == "E4.6.4.5"
    ad = _adapter()
    text = config_json(ad.config).replace('"provenance":{}', '"provenance":{"x":' + DEEP + '},"provenance":{}')
    assert code_of(parse_config, text) == "E4.6.10.4"


def test_a_shallow_text_in_a_deep_call_stack_gets_the_verdict_of_its_text():
    """Depth is the text's: a caller deep in Python's stack (the C scanner runs out of recursion on a
    30-level text) gets the verdict of the text, not "depth"."""
    import sys

    def at_depth(n):
        if n:
            return at_depth(n - 1)
        with pytest.raises(jsontext.JsonRuleError) as err:
            jsontext.loads('{"a":' + "[" * 30 + "1e999" + "]" * 30 + "}")
        ok = jsontext.loads('{"a":' + "[" * 30 + "]" * 30 + "}")
        at_bound = jsontext.loads('{"a":' + "[" * 63 + "]" * 63 + "}")  # 64 levels: accepted
        return err.value.rule, jsontext.depth(ok), jsontext.depth(at_bound)
    import inspect
    limit = sys.getrecursionlimit()
    assert at_depth(limit - len(inspect.stack()) - 30) == ("number", 31, 64)
    assert sys.getrecursionlimit() == limit  # the room it made is given back


def test_text_depth_agrees_with_the_parsed_depth():
    for text in ["0", '"[["', "[]", '{"a":[{"b":[]}]}', '[["\\\\"],"\\"[",{"k\\\\\\"[":[[]]}]', " [ [ ] ] "]:
        assert jsontext.text_depth(text) == jsontext.depth(json.loads(text)), text


# --- finding 4: strings are Unicode text (no unpaired surrogate) ------------------------------------

LONE = ["\\udc80", "\\ud800", "\\ud800\\u0041", "\\uDBFF x", "\\udc00\\ud800", "\\ud83d\\ud83d\\ude00",
        "\\\\\\udc80"]
PAIRED = ["\\ud83d\\ude00", "\\uD800\\uDC00", "\\\\udc80", "\\\\\\\\ud800", "\\u005cud800", "\\ud7ff\\ue000"]


@pytest.mark.parametrize("s", LONE)
def test_an_unpaired_surrogate_escape_is_a_syntax_error(s):
    for text in ('{"a":"' + s + '"}', '["' + s + '"]', '{"' + s + '":1}', '"' + s + '"'):
        with pytest.raises(jsontext.JsonRuleError) as err:
            jsontext.loads(text)
        assert err.value.rule == "syntax", text
        assert jsontext.unpaired_surrogate(text), text
    # before depth, numbers and duplicates (it is part of rule 4, syntax)
    for text in ('["' + s + '",' + DEEP + "]", '["' + s + '",1e999]', '{"a":"' + s + '","a":1}',
                 '["' + s + '",' + "[" * 5000 + "]" * 5000 + "]"):
        with pytest.raises(jsontext.JsonRuleError) as err:
            jsontext.loads(text)
        assert err.value.rule == "syntax", text[:50]


@pytest.mark.parametrize("s", PAIRED)
def test_paired_surrogates_and_escaped_backslashes_are_accepted(s):
    text = '{"a":"' + s + '","' + s + '":["' + s + '"]}'
    assert jsontext.loads(text) == json.loads(text)
    assert not jsontext.unpaired_surrogate(text)


def test_unpaired_surrogate_answers_a_bool_and_reads_across_its_chunks():
    for text in ('"\u00e9\\ud83d\\ude00"', '"\U0001F600"', '"\\u00e9"', '"plain"', '"\\ud7ff"'):
        assert jsontext.unpaired_surrogate(text) is False, text
    assert jsontext.unpaired_surrogate('"\u00e9\\udc80"') is True
    for k in range(2**20 - 8, 2**20 + 2):  # an escape across the 1 MiB chunks of the scan
        pad = '"' + "x" * k
        assert jsontext.unpaired_surrogate(pad + '\\ud83d\\ude00"') is False, k
        assert jsontext.unpaired_surrogate(pad + '\\ud83d"') is True, k
        assert jsontext.unpaired_surrogate(pad + 'x\\ude00"') is True, k


def test_scan_gives_depth_and_unicode_of_a_parsed_value():
    scan = jsontext._scan
    assert scan("x") == (0, False) and scan(1) == (0, False) and scan(None) == (0, False)
    assert scan("\udc80") == (0, True)
    assert scan([]) == (1, False) and scan({}) == (1, False) and scan([[], [[1]]]) == (3, False)
    assert scan({"a": ["\udc80"]})[1] and scan({"\udc80": 1})[1] and not scan({"\u00e9": ["\U0001F600"]})[1]


def test_a_raw_surrogate_in_a_document_is_refused():
    assert code_of(parse_document, '{"a":"\ud800"}') == "E4.6.10.3"
    assert jsontext.unpaired_surrogate('{"a":"\udc80","b":"\\ud83d\\ude00"}')


@pytest.mark.parametrize("where", ["metadata value", "metadata key", "tensor name", "base_model.name",
                                   "provenance", "provenance key"])
def test_unpaired_surrogates_in_files_are_refused(where):
    """Issue 23 finding 4: "\\udc80" in __metadata__, base_model.name or provenance was accepted.
    In the header the escape is the header's (E4.6.4.4); in the document, the document's own escape,
    written \\\\udc80 in the header (E4.6.10.3). The same file with a surrogate pair is accepted."""
    ad = _adapter()
    ad.config.base_model = {"name": "m"}
    header = json.dumps({"__metadata__": _meta(ad), **_entries(ad)}, separators=(",", ":"))
    edits = {  # {S}: the string inserted, as header text
        "metadata value": ('"vera_format"', '"note":"{S}","vera_format"'),
        "metadata key": ('"vera_format"', '"{S}":"x","vera_format"'),
        "tensor name": ('"q.lambda_b"', '"q.lambda_b{S}"'),
        "base_model.name": ('\\"name\\":\\"m\\"', '\\"name\\":\\"{S}\\"'),
        "provenance": ('\\"provenance\\":{}', '\\"provenance\\":{\\"a\\":\\"{S}\\"}'),
        "provenance key": ('\\"provenance\\":{}', '\\"provenance\\":{\\"{S}\\":1}'),
    }
    old, new = edits[where]
    assert old in header
    in_header = where in ("metadata value", "metadata key", "tensor name")
    lone, pair = ("\\udc80", "\\ud83d\\ude00") if in_header else ("\\\\udc80", "\\\\ud83d\\\\ude00")
    blob = _blob(header.replace(old, new.replace("{S}", lone)), _data(ad))
    assert code_of(lambda: build_adapter(*container.parse(blob))) == ("E4.6.4.4" if in_header else "E4.6.10.3")
    paired = _blob(header.replace(old, new.replace("{S}", pair)), _data(ad))
    if where == "tensor name":  # a name no module has: refused by step 23, not by the dialect
        assert code_of(lambda: build_adapter(*container.parse(paired))) == "E4.6.23.2"
    else:
        build_adapter(*container.parse(paired))


def test_the_writer_refuses_what_the_reader_would(tmp_path):
    with pytest.raises(AdapterFileError) as err:
        new_adapter([("q", 4, 4)], r=2, provenance={"note": "\udc80"})
    assert err.value.code == "E4.6.10.3"
    ad = new_adapter([("q", 4, 4)], r=2, provenance={"emoji": "\U0001F600", "text": "\\udc80"})
    save_adapter(ad, tmp_path / "a.safetensors")
    assert load_adapter(tmp_path / "a.safetensors").config.provenance == {"emoji": "\U0001F600", "text": "\\udc80"}


@pytest.mark.parametrize("s", LONE + PAIRED)
def test_header_verdicts_agree_with_the_safetensors_library(s):
    """safetensors (serde_json) refuses an unpaired surrogate in the header; the reference agrees."""
    st = pytest.importorskip("safetensors.numpy")
    blob = _blob('{"__metadata__":{"a":"' + s + '"}}')
    try:
        st.load(blob)
        theirs = True
    except Exception:  # noqa: BLE001 - SafetensorError; only accept/refuse is compared
        theirs = False
    try:
        container.parse(blob)
        ours = True
    except AdapterFileError as exc:
        assert exc.code == "E4.6.4.4"
        ours = False
    assert ours == theirs == (s in PAIRED)
