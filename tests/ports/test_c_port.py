"""The C99 port (ports/c) against every vector of spec/vectors (spec 6), in two builds: warnings as
errors (-std=c99 -pedantic -Wall -Wextra -Werror -O2) and with -fsanitize=address,undefined; and
a short differential fuzz run of its reader against the Python reference (tools/fuzz_c_port.py).

Expected values come from the vector files (Random123's own known answers, and the reference's
projection and file vectors), never from the port. Skipped, with the reason, where no C compiler
exists; the sanitized build alone is skipped where its runtime does not link or run.
"""
from __future__ import annotations

import importlib.util
import json
import os
import stat
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import ROOT, VECTORS

_spec = importlib.util.spec_from_file_location("fuzz_c_port", ROOT / "tools" / "fuzz_c_port.py")
cport = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cport)

BUILDS = ("plain", "sanitized")
FUZZ_CASES = 300  # per build; the long run is tools/fuzz_c_port.py --minutes N


def _tests(name: str) -> list[dict]:
    env = json.loads((VECTORS / name).read_text())
    tests = [t for g in env["testGroups"] for t in g["tests"]]
    assert len(tests) == env["numberOfTests"]
    return tests


def _groups(name: str) -> list[tuple[str, list[dict]]]:
    env = json.loads((VECTORS / name).read_text())
    return [(g["type"], g["tests"]) for g in env["testGroups"]]


@pytest.fixture(scope="session")
def c_builds(tmp_path_factory) -> dict[str, Path | str]:
    """{build: executable path, or the reason it is not available}; compiled once per session."""
    cc = cport.find_cc()
    if cc is None:
        pytest.skip("no C compiler (cc, gcc or clang) on PATH: the C port (ports/c) is not checked")
    tmp = tmp_path_factory.mktemp("c-port")
    out: dict[str, Path | str] = {}
    with ThreadPoolExecutor(2) as pool:  # the two builds compile side by side
        plain = pool.submit(cport.compile_port, tmp / "vera-c", cc=cc)
        why = cport.sanitizer_works(cc, tmp)
        san = None if why else pool.submit(cport.compile_port, tmp / "vera-c-san", sanitize=True, cc=cc)
        try:
            out["plain"] = plain.result()
        except subprocess.CalledProcessError as exc:  # warnings are errors: a failure here is a test failure
            pytest.fail(f"ports/c does not compile with {' '.join(cport.WARN)}:\n{exc.stderr}")
        if why:
            out["sanitized"] = f"the sanitizer runtime does not work with {cc} here ({why})"
        else:
            try:
                out["sanitized"] = san.result()
            except subprocess.CalledProcessError as exc:
                pytest.fail(f"ports/c does not compile with {' '.join(cport.WARN + cport.SANITIZE)}:\n{exc.stderr}")
    return out


@pytest.fixture(params=BUILDS)
def exe(request, c_builds) -> Path:
    got = c_builds[request.param]
    if isinstance(got, str):
        pytest.skip(got)
    return got


def _batch(exe: Path, commands: list[str]) -> list[str]:
    proc = subprocess.run([str(exe), "--batch"], input="\n".join(commands) + "\n", capture_output=True, text=True,
                          env={**os.environ, **cport.SAN_ENV}, timeout=120)
    assert proc.returncode == 0 and not proc.stderr.strip(), f"status {proc.returncode}:\n{proc.stderr[-3000:]}"
    lines = proc.stdout.splitlines()
    assert len(lines) == len(commands)
    return lines


# --- spec 1.1-1.2: Random123's known answers -------------------------------------------------

def _random123_lines() -> list[list[str]]:
    rows = []
    for name in ("kat_vectors", "old_kat_vectors"):
        for line in (VECTORS / "random123" / name).read_text().splitlines():
            f = line.split()
            if len(f) == 12 and f[0] == "philox4x32" and f[1] == "10":
                rows.append(f[2:])
    return rows


def test_philox_known_answers(exe):
    rows = _random123_lines()
    assert len(rows) == 55  # spec 6.2: 3 + 52 lines
    json_rows = [t["counter"] + t["key"] + t["expected"] for t in _tests("philox4x32_10.json")]
    assert len(json_rows) == 55
    for source in (rows, json_rows):
        got = _batch(exe, ["philox " + " ".join(r[:6]) for r in source])
        assert [g.split() for g in got] == [[w.lower() for w in r[6:]] for r in source]


# --- spec 1.3-2.1, 2.5.3: projections ----------------------------------------------------------

def test_projection_vectors(exe):
    groups = dict(_groups("projections.json"))
    philox = groups["Philox4x32-10Projection"]
    got = _batch(exe, [f"proj {t['seed']} {t['r']} {t['n_in']} {t['n_out']} {t['group']}" for t in philox])
    for t, line in zip(philox, got):
        sha_a, sha_b, bound_a, bound_b, stream_a, stream_b = line.split()
        assert (sha_a, sha_b) == (t["sha256_A"], t["sha256_B"]), t["comment"]
        assert (stream_a, stream_b) == (t["sha256_A"], t["sha256_B"]), "streaming checksums differ: " + t["comment"]
        assert (bound_a, bound_b) == (t["bound_A_bits"], t["bound_B_bits"]), t["comment"]
    words, elems, want_w, want_b = [], [], [], []
    for t in philox:
        for s in t["samples"]:
            m = 0 if s["matrix"] == "A" else 1
            words.append(f"word {t['seed']} {m} {t['group']} {s['n']} {s['k']}")
            elems.append(f"elem {t['seed']} {t['r']} {t['n_in']} {t['n_out']} {t['group']} {s['matrix']} "
                         f"{s['row']} {s['col']}")
            want_w.append(s["word"])
            want_b.append(s["bits"])
    assert len(words) > 50
    assert _batch(exe, words) == want_w
    assert _batch(exe, elems) == want_b
    peft = groups["PeftMt19937Projection"]
    got = _batch(exe, [f"peft {t['seed']} {t['r']} {t['n_in']} {t['n_out']}" for t in peft])
    for t, line in zip(peft, got):
        f = line.split()
        assert f[:4] == [t["sha256_A"], t["sha256_B"], t["sha256_A"], t["sha256_B"]], t["comment"]
        flat = [b for row in t["A_bits"] for b in row] + [b for row in t["B_bits"] for b in row]
        assert f[4:] == flat, t["comment"]


# --- spec 4, 6.5: the file vectors ------------------------------------------------------------

def _want_file(t: dict) -> str:
    if t["result"] == "valid":
        return " ".join(["accepted"] + [f"{e['group']} {e['A']} {e['B']}" for e in t["config"]["projection_sha256"]])
    return f"rejected {t['error']['code']} {cport.escape_field(t['error']['field'])}"


def test_file_vectors(exe):
    tests = _tests("files.json")
    got = _batch(exe, [f"file {VECTORS / 'files' / t['file']}" for t in tests])
    wrong = [(t["file"], t["comment"], want, g) for t in tests for want, g in [(_want_file(t), got[tests.index(t)])]
             if want != g and not (t["result"] == "acceptable" and g.startswith(("accepted", "rejected")))]
    assert not wrong, "\n".join(map(str, wrong))
    assert sum(t["result"] == "valid" for t in tests) >= 11 and sum(t["result"] == "invalid" for t in tests) >= 109


def test_vectors_read_exactly(exe):
    """Level F (spec 5.3): every module's lambda_d and lambda_b of every valid file vector, from either
    tensor layout and each vector dtype, exactly the values the reference reads (as binary64 bits)."""
    import numpy as np

    from vera_ref.adapter import load_adapter
    valid = [t for t in _tests("files.json") if t["result"] == "valid"]
    got = _batch(exe, [f"vectors {VECTORS / 'files' / t['file']}" for t in valid])
    dtypes = set()
    for t, line in zip(valid, got):
        ad = load_adapter(VECTORS / "files" / t["file"])
        dtypes.add(ad.config.vector_dtype)
        want = []
        for m in ad.config.modules:
            for v in (ad.lambda_d[m.name], ad.lambda_b[m.name]):
                want += [f"{int(b):016x}" for b in np.asarray(v, dtype=np.float64).reshape(-1).view(np.uint64)]
        assert line.split() == want, t["file"]
    assert dtypes == {"float64", "float32", "float16", "bfloat16"}


def test_example_program(exe):
    """The example's own mode: an adapter's checksums made by the port, exit 0; a rule code, exit 1."""
    tests = _tests("files.json")
    valid = next(t for t in tests if t["result"] == "valid" and t["config"]["sharing"] == "per-module")
    proc = subprocess.run([str(exe), str(VECTORS / "files" / valid["file"])], capture_output=True, text=True,
                          env={**os.environ, **cport.SAN_ENV})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for e in valid["config"]["projection_sha256"]:
        assert f"group {e['group']}  A {e['A']}" in proc.stdout and f"B {e['B']}" in proc.stdout
    bad = next(t for t in tests if t["result"] == "invalid" and t["error"]["code"] == "E4.6.26.1")
    proc = subprocess.run([str(exe), str(VECTORS / "files" / bad["file"])], capture_output=True, text=True,
                          env={**os.environ, **cport.SAN_ENV})
    assert proc.returncode == 1 and proc.stdout.startswith("E4.6.26.1 projection_sha256: "), proc.stdout


def test_paths_that_are_not_files(exe, tmp_path):
    """spec 4.6 step 0 (no file vector can reach it): the same codes as the reference, no blocking."""
    from vera_ref.adapter import load_adapter
    from vera_ref.errors import AdapterFileError
    peft = tmp_path / "peft"
    peft.mkdir()
    (peft / "adapter_config.json").write_text("{}")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    paths = [tmp_path / "missing.safetensors", peft, tmp_path, fifo]
    got = _batch(exe, [f"file {p}" for p in paths])
    for p, g in zip(paths, got):
        with pytest.raises(AdapterFileError) as err:
            load_adapter(p)
        assert g == f"rejected {err.value.code} {err.value.field}", p


def test_reader_hostile_sizes(exe, tmp_path):
    """Bounds before work: a 2^20-bracket header (E4.6.4.2), 100,000 nesting levels (syntax, then depth,
    judged without recursion), a shape past 2^64 bytes (E4.6.6.6); same verdicts as the reference."""
    from vera_ref import container
    from vera_ref.errors import AdapterFileError

    def blob(text: bytes, data: bytes = b"") -> bytes:
        return len(text).to_bytes(8, "little") + text + data

    cases = {
        "count": blob(b"{" + b"[" * (1 << 20) + b"}"),
        "deep": blob(b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        "deep-bad": blob(b'{"a":' + b"[" * 100_000 + b"]" * 99_999 + b"}"),
        "size": blob(b'{"__metadata__":{},"t":{"dtype":"F64","shape":[4294967296,4294967296,4294967296],'
                     b'"data_offsets":[0,8]}}', b"\0" * 8),
    }
    paths = []
    for name, b in cases.items():
        (tmp_path / name).write_bytes(b)
        paths.append(tmp_path / name)
    got = _batch(exe, [f"file {p}" for p in paths])
    for (name, b), g in zip(cases.items(), got):
        with pytest.raises(AdapterFileError) as err:
            container.parse(b)
        assert g == f"rejected {err.value.code} {cport.escape_field(err.value.field)}", name


def test_sizes_rule_of_the_spec_text(exe, tmp_path):
    """spec 4.1 Sizes: refused (E4.6.6.6) when itemsize times the product of the non-zero dimensions
    exceeds the data section, zero-size tensors included: a scalar or a zero-size F64 tensor in a
    file whose data section is under 8 bytes. (The reference checks the product only after a
    non-zero dimension, so it reads these two as E4.6.6.8 and as a valid entry: reported.)"""
    cases = [(b'{"__metadata__":{},"t":{"dtype":"F64","shape":[],"data_offsets":[0,8]}}', b"\0" * 4),
             (b'{"__metadata__":{},"t":{"dtype":"F64","shape":[0],"data_offsets":[0,0]}}', b""),
             (b'{"__metadata__":{},"t":{"dtype":"F32","shape":[3,0],"data_offsets":[0,0]}}', b"\0" * 3)]
    paths = []
    for i, (h, d) in enumerate(cases):
        (tmp_path / f"s{i}").write_bytes(len(h).to_bytes(8, "little") + h + d)
        paths.append(tmp_path / f"s{i}")
    assert _batch(exe, [f"file {p}" for p in paths]) == ["rejected E4.6.6.6 t"] * 3


_META = '"vera_format":"vera-adapter","vera_spec_version":"1.1"'
DIALECT_CASES = [  # spec 4.1.1 edge cases: (header text) -> the reference's verdict, and the port's
    r'{"a":"\ud800"}', r'{"a":"\udc00"}', r'{"a":"\ud800\u0041"}', r'{"a":"\ud800\ud800\udc00"}',
    r'{"a":"\ud800\udc00"}', r'{"a":"\\ud800"}', '{"a":"\\ud8', r'{"\ud83d\ude00":1,"😀":2}',
    '{"a":1,"a":[' + "[" * 70 + "]" * 70 + "]}",
    '{"a":[1e400,1,{"b":1,"b":2}]}', '{"a":-9223372036854775809}', '{"a":18446744073709551615}',
    '{"a":-9223372036854775808}', '{"a":18446744073709551616}', '{"a":-0}',  # rule 6's integer range ends
    '{"a":0.' + "1" * 98 + "}", '{"a":0.' + "1" * 99 + "}",  # 100 characters, then 101
    '{"a":1.7976931348623157e308}', '{"a":1.7976931348623159e308}',  # the largest binary64, then infinity
    '{"a":' + "[" * 63 + "]" * 63 + "}", '{"a":' + "[" * 64 + "]" * 64 + "}",  # depth 64, then 65 (rule 5)
    '{"__metadata__":{"vera_config":"{\\"a\\":\\"\\\\ud800\\"}",' + _META + "}}",
    '{"__metadata__":{"vera_config":"{\\"a\\":1,\\"a\\":' + "[" * 70 + "]" * 70 + '}",' + _META + "}}",
    '{"__metadata__":{"vera_config":"' + "\\u005b" * ((1 << 20) + 1) + '",' + _META + "}}",
]


def test_dialect_edge_cases(exe, tmp_path):
    """Unpaired surrogate escapes, keys equal after unescaping, depth under a repeated key, integer
    range ends, the document's own structural characters (E4.6.10.2): the reference's verdicts."""
    from vera_ref import container
    from vera_ref.adapter import build_adapter
    from vera_ref.errors import AdapterFileError
    paths, want = [], []
    for i, text in enumerate(DIALECT_CASES):
        b = text.encode("utf-8")
        blob = len(b).to_bytes(8, "little") + b
        (tmp_path / f"d{i}").write_bytes(blob)
        paths.append(tmp_path / f"d{i}")
        try:
            build_adapter(*container.parse(blob))
            want.append("accepted")
        except AdapterFileError as exc:
            want.append(f"rejected {exc.code} {cport.escape_field(exc.field)}")
    assert len(set(want)) >= 5
    assert _batch(exe, [f"file {p}" for p in paths]) == want


def _with_document(blob: bytes, edit) -> bytes:
    """A file vector with its metadata document's text changed by ``edit`` (tensor bytes kept)."""
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    header["__metadata__"]["vera_config"] = edit(header["__metadata__"]["vera_config"])
    text = json.dumps(header, separators=(",", ":")).encode()
    return len(text).to_bytes(8, "little") + text + blob[8 + n:]


def test_group_numbers_compare_as_json_values(exe, tmp_path):
    """spec 4.6 step 21 with 4.3's integers (spec 1.2): a checksum entry's group is an integer literal
    (1, and -0 which is 0); true, 1.0, 2e0, "1", 1.5, -0.0, false and null are not (E4.6.21.2)."""
    from vera_ref import container
    from vera_ref.adapter import build_adapter
    from vera_ref.errors import AdapterFileError
    tests = _tests("files.json")
    per_module = next(t for t in tests if t["result"] == "valid" and t["config"]["sharing"] == "per-module")
    shared = next(t for t in tests if t["result"] == "valid" and t["config"]["sharing"] == "shared"
                  and t["config"]["generator"] == "philox4x32-10")
    edits = [(per_module, '"group":1', '"group":true'), (per_module, '"group":1', '"group":1.0'),
             (per_module, '"group":2', '"group":2e0'), (per_module, '"group":1', '"group":"1"'),
             (per_module, '"group":1', '"group":1.5'), (shared, '"group":0', '"group":-0.0'),
             (shared, '"group":0', '"group":false'), (shared, '"group":0', '"group":null'),
             (per_module, '"group":1', '"group":1'), (shared, '"group":0', '"group":-0')]
    paths, want = [], []
    for i, (t, old, new) in enumerate(edits):
        blob = _with_document((VECTORS / "files" / t["file"]).read_bytes(), lambda d: d.replace(old, new))
        assert blob != (VECTORS / "files" / t["file"]).read_bytes()
        (tmp_path / f"g{i}").write_bytes(blob)
        paths.append(tmp_path / f"g{i}")
        try:
            ad = build_adapter(*container.parse(blob))
            want.append(" ".join(["accepted"] + [f"{g} {e['A']} {e['B']}" for (g, _, _), e in
                                                 zip(ad.config.groups(), ad.config.projection_sha256)]))
        except AdapterFileError as exc:
            want.append(f"rejected {exc.code} {exc.field}")
    assert want[-2].startswith("accepted") and want[-1].startswith("accepted")
    assert want[:-2] == ["rejected E4.6.21.2 projection_sha256"] * 8
    assert _batch(exe, [f"file {p}" for p in paths]) == want


def test_fields_chosen_and_cut(exe, tmp_path):
    """spec 4.6: the first unknown field in ascending code-point order (step 11, base_model's keys
    in step 20), and spec 4.6.1: a field longer than 120 characters cut to 117 and "..." (counted
    in characters: two- and four-byte UTF-8 ones too)."""
    from vera_ref import container
    from vera_ref.adapter import build_adapter
    from vera_ref.errors import AdapterFileError
    t = next(t for t in _tests("files.json") if t["result"] == "valid" and t["config"]["sharing"] == "shared"
             and t["config"]["generator"] == "philox4x32-10")

    def add(**fields):
        def edit(text):
            doc = json.loads(text)
            doc.update(fields)
            return json.dumps(doc, ensure_ascii=bool(len(doc) % 2))  # escaped and raw characters both
        return edit
    edits = [add(zz=1, ab=1, b_=2), add(**{"k" * 200: 1}), add(**{"\u00e9" * 130: 1}),
             add(**{"\U0001F600" * 125: 1, "\U0001F600" * 3: 1}), add(**{"x" * 120: 1}), add(**{"x" * 121: 1}),
             add(**{"\u00e9" * 119: 1}), add(**{"\u00e9" * 120: 1}), add(**{"\u00e9" * 121: 1}),
             add(base_model={"name": "n", "zz": "1", "url": "1"}),
             add(base_model={"name": "n", "\u00e9" * 200: "1"})]
    paths, want = [], []
    for i, edit in enumerate(edits):
        blob = _with_document((VECTORS / "files" / t["file"]).read_bytes(), edit)
        (tmp_path / f"f{i}").write_bytes(blob)
        paths.append(tmp_path / f"f{i}")
        with pytest.raises(AdapterFileError) as err:
            build_adapter(*container.parse(blob))
        want.append(f"rejected {err.value.code} {cport.escape_field(err.value.field)}")
    assert want[0] == "rejected E4.6.11.1 ab" and want[1].endswith("k" * 117 + "...")
    assert _batch(exe, [f"file {p}" for p in paths]) == want


# --- the differential fuzz, short -------------------------------------------------------------

def test_differential_fuzz_short(exe, tmp_path):
    """Mutants of tools/fuzz_reader.py: the C verdict (accept with the same checksums, or the same rule
    code and field) equals the reference's on every file; no crash, no sanitizer report."""
    s = cport.differential(exe, FUZZ_CASES, None, seed=20261204, workdir=tmp_path, log=lambda _m: None)
    assert s["cases"] == FUZZ_CASES
    assert not s["crashes"] and not s["sanitizer"], (s["crashes"] + s["sanitizer"])[0][1]
    assert not s["disagree"], "\n".join(f"python {w}\nc      {g}\nbytes  {b[:200]!r}" for b, w, g in s["disagree"][:5])
    assert s["python_other"] == 0
    assert s["accepted"] > 0 and len(s["codes"]) > 10  # the run exercised both verdicts and many rules
