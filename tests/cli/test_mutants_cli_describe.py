"""Kill-tests for what ``vera-ref inspect`` / ``validate`` print (vera_ref/describe.py) and for the
``module:attr`` names of ``--impl`` / ``--model`` (vera_ref/resolve.py), README "Command line"; issue 15.

Run in-process (the CLI tests run the installed command in a subprocess, which a mutation campaign's
tracer cannot see). Expected texts are built from the test vectors' records (spec/vectors/files.json)
and from the file's header read here with ``struct`` and ``json``, not through ``vera_ref``'s reader.
"""
import json
import os
import re
import struct
import sys
import textwrap

import pytest

from conftest import VECTORS
from vera_ref.describe import describe, describe_json, validity
from vera_ref.errors import AdapterFileError, VeraError
from vera_ref.resolve import UsageError, resolve_object

FILES = json.loads((VECTORS / "files.json").read_text())
VALID = FILES["testGroups"][0]["tests"]
INVALID = FILES["testGroups"][1]["tests"]


def _header(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), len(raw)


def _expected_text(case, path):
    header, size = _header(path)
    meta = header.pop("__metadata__")
    c = case["config"]
    prefix = c.get("module_prefix", "")
    seed = f", seed {c['seed']}" if "seed" in c else ""
    out = [f"{path}: VeRA adapter, spec {meta['vera_spec_version']}, {size} bytes",
           f"  r {c['r']}, generator {c['generator']}{seed}, sharing {c['sharing']}, n_in {c['n_in']}, n_out {c['n_out']}",
           f"  vectors {c['vector_dtype']}, d_initial {c.get('d_initial', 0.1):g}, dropout {c.get('dropout', 0.0):g}"]
    if c.get("base_model"):
        out.append("  base model: " + ", ".join(f"{k} {v}" for k, v in sorted(c["base_model"].items())))
    if c.get("provenance"):
        out.append("  provenance: " + json.dumps(c["provenance"], sort_keys=True))
    names = [prefix + m[0] for m in c["modules"]]
    out.append(f"  modules ({len(names)}):")
    w = max(map(len, names))
    for name, m in zip(names, c["modules"]):
        out.append("    " + name.ljust(w) + "  in " + str(m[1]).rjust(6) + "  out " + str(m[2]).rjust(6) + "  "
                   + (m[3] if len(m) > 3 else "linear"))
    out.append(f"  tensors ({len(header)}):")
    w = max(map(len, header))
    for k in sorted(header):
        t = header[k]
        b, e = t["data_offsets"]
        out.append("    " + k.ljust(w) + "  " + t["dtype"].ljust(4) + "  " + str(t["shape"]).ljust(14) + " "
                   + str(e - b).rjust(10) + " bytes")
    out.append("  projection checksums (sha256 of float32 LE bytes, verified):")
    out += [f"    group {p['group']}: A {p['A']}  B {p['B']}" for p in c["projection_sha256"]]
    return "\n".join(out)


@pytest.mark.parametrize("case", VALID, ids=lambda c: c["file"])
def test_describe_every_valid_vector(case):
    path = str(VECTORS / "files" / case["file"])
    assert describe(path) == _expected_text(case, path)


def test_describe_a_known_file_word_for_word():
    path = str(VECTORS / "files" / "valid-06.safetensors")
    assert describe(path) == textwrap.dedent(f"""\
        {path}: VeRA adapter, spec 1.1, 1332 bytes
          r 2, generator philox4x32-10, seed 3, sharing shared, n_in 4, n_out 5
          vectors float32, d_initial 0.1, dropout 0
          base model: fingerprint e66f0c523557d7eb6c326ca19d7b5d04cdbfbc89e1003b8e86b4361f54d59e90, name toy, revision 1
          provenance: {{"note": "task head in extra tensors", "trainer": "vectors.py"}}
          modules (2):
            l1  in      4  out      5  linear
            l2  in      4  out      5  linear
          tensors (6):
            classifier.bias    F16   [2]                     4 bytes
            classifier.weight  F32   [2, 5]                 40 bytes
            l1.lambda_b        F32   [5]                    20 bytes
            l1.lambda_d        F32   [2]                     8 bytes
            l2.lambda_b        F32   [5]                    20 bytes
            l2.lambda_d        F32   [2]                     8 bytes
          projection checksums (sha256 of float32 LE bytes, verified):
            group 0: A 35d54efbe9f3310c839cc6047f90d3ec1af90b3ee071beea412ea7e8cae9241d  \
B ab5540c1ca674e40b61735c0806e3e111b7b8397a9861e8cc7a81544fcdf4693""")


def test_provenance_is_printed_with_sorted_keys(tmp_path):
    # readers accept any dialect-valid document (spec 4.3), so a file may list provenance keys in any order
    raw = (VECTORS / "files" / "valid-06.safetensors").read_bytes()
    sorted_ = b'{\\"note\\":\\"task head in extra tensors\\",\\"trainer\\":\\"vectors.py\\"}'
    unsorted = b'{\\"trainer\\":\\"vectors.py\\",\\"note\\":\\"task head in extra tensors\\"}'
    assert raw.count(sorted_) == 1 and len(sorted_) == len(unsorted)
    path = tmp_path / "unsorted.safetensors"
    path.write_bytes(raw.replace(sorted_, unsorted))  # same length: offsets unchanged
    header, _ = _header(path)
    assert list(json.loads(header["__metadata__"]["vera_config"])["provenance"]) == ["trainer", "note"]
    lines = describe(path).splitlines()
    assert lines[4] == '  provenance: {"note": "task head in extra tensors", "trainer": "vectors.py"}'


@pytest.mark.parametrize("case", VALID, ids=lambda c: c["file"])
def test_describe_json_every_valid_vector(case):
    path = VECTORS / "files" / case["file"]
    header, size = _header(path)
    meta = header.pop("__metadata__")
    meta["vera_config"] = json.loads(meta["vera_config"])  # the document as an object, not an escaped string
    got = describe_json(path)
    assert got == {"file": os.fspath(path), "bytes": size, "metadata": meta,
                   "tensors": {k: {"dtype": t["dtype"], "shape": t["shape"],
                                   "bytes": t["data_offsets"][1] - t["data_offsets"][0]}
                               for k, t in header.items()}}
    assert list(got["tensors"]) == sorted(header)
    assert set(got["tensors"]) == set(case["tensors"])


@pytest.mark.parametrize("case", VALID, ids=lambda c: c["file"])
def test_validity_line(case):
    path = str(VECTORS / "files" / case["file"])
    c = case["config"]
    assert validity(path) == (f"valid: {path} (r {c['r']}, {len(c['modules'])} modules, generator {c['generator']}, "
                              "checksums verified)")


@pytest.mark.parametrize("case", INVALID, ids=lambda c: c["file"])
@pytest.mark.parametrize("fn", [describe, describe_json, validity])
def test_nothing_is_described_that_would_not_load(case, fn):
    # every function checks the file fully first (spec 4.6, checksums included)
    with pytest.raises(AdapterFileError) as err:
        fn(VECTORS / "files" / case["file"])
    assert (str(err.value), err.value.code) == (case["error"]["message"], case["error"]["code"])


@pytest.mark.parametrize("fn", [describe, describe_json, validity])
def test_the_projection_limit_is_passed_to_the_reader(fn):
    path = VECTORS / "files" / "valid-01.safetensors"  # r 4, n_in 16, n_out 24: 160 elements
    msg = "projection: 160 elements exceed the limit of 159 (raise max_projection_elements to allow it)"
    with pytest.raises(AdapterFileError, match=r"^" + re.escape(msg) + r"$"):
        fn(path, max_projection_elements=159)
    assert fn(path, max_projection_elements=160)


# --- resolve_object ------------------------------------------------------------------------

@pytest.fixture
def here(tmp_path, monkeypatch):
    """A scratch current folder; sys.path and sys.modules restored afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd())])
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


@pytest.mark.parametrize("spec", [None, "", "mod", ":make", "mod:", ":", "mod.make"])
def test_a_name_without_module_colon_attr(spec):
    with pytest.raises(UsageError, match=r"^" + re.escape(f"--impl must be MODULE:NAME (e.g. mymodule:make), "
                                                          f"got {spec!r}") + r"$"):
        resolve_object(spec, "--impl")


def test_a_module_beside_the_user_is_found(here):
    (here / "vera_mut_beside.py").write_text("class K:\n    class Inner:\n        v = 7\ndef make():\n    return 5\n")
    assert resolve_object("vera_mut_beside:make", "--impl")() == 5
    assert resolve_object("vera_mut_beside:K.Inner.v", "--model") == 7
    assert sys.path[0] == str(here) and sys.path.count(str(here)) == 1  # inserted once, first


def test_the_current_folder_is_not_inserted_twice(here):
    sys.path.append(str(here))
    (here / "vera_mut_twice.py").write_text("x = 1\n")
    assert resolve_object("vera_mut_twice:x", "--impl") == 1
    assert sys.path.count(str(here)) == 1 and sys.path[-1] == str(here)


def test_a_missing_attribute(here):
    (here / "vera_mut_attr.py").write_text("class K:\n    pass\n")
    for attr in ("nope", "K.nope", "K.__name__.nope"):
        with pytest.raises(UsageError, match=r"^" + re.escape(f"--model: module 'vera_mut_attr' has no attribute "
                                                               f"{attr!r}") + r"$"):
            resolve_object(f"vera_mut_attr:{attr}", "--model")


@pytest.mark.parametrize("module", ["vera_mut_nosuch", "vera_mut_nosuch.sub", "vera_mut_pkg.nosuch"])
def test_a_module_that_is_not_there(here, module):
    (here / "vera_mut_pkg").mkdir()
    (here / "vera_mut_pkg" / "__init__.py").write_text("")
    msg = f"--impl: cannot import module {module!r} (not in the current folder {here} nor installed)"
    with pytest.raises(UsageError, match=r"^" + re.escape(msg) + r"$"):
        resolve_object(f"{module}:make", "--impl")


@pytest.mark.parametrize("body, missing", [
    ("import vera_mut_absent_dep\n", "vera_mut_absent_dep"),
    ("import vera_mut\n", "vera_mut"),                     # a prefix of the module's own name, no dot
    ("import vera_mut_needsx.y\n", "vera_mut_needsx"),
    ("raise ModuleNotFoundError('no name')\n", None),
])
def test_a_module_that_needs_a_missing_package(here, body, missing):
    (here / "vera_mut_needs.py").write_text(body)
    msg = f"--impl: module 'vera_mut_needs' needs the package {missing!r}, which is not installed"
    with pytest.raises(UsageError, match=r"^" + re.escape(msg) + r"$"):
        resolve_object("vera_mut_needs:make", "--impl")


def test_a_submodule_that_needs_a_missing_package(here):
    (here / "vera_mut_pkg2").mkdir()
    (here / "vera_mut_pkg2" / "__init__.py").write_text("")
    (here / "vera_mut_pkg2" / "sub.py").write_text("import vera_mut_pkg2x\n")
    msg = "--impl: module 'vera_mut_pkg2.sub' needs the package 'vera_mut_pkg2x', which is not installed"
    with pytest.raises(UsageError, match=r"^" + re.escape(msg) + r"$"):
        resolve_object("vera_mut_pkg2.sub:make", "--impl")


def test_a_module_with_a_syntax_error(here):
    (here / "vera_mut_syntax.py").write_text("x = 1\ndef f(:\n    pass\n")
    with pytest.raises(UsageError) as err:
        resolve_object("vera_mut_syntax:f", "--impl")
    want = (f"--impl: module 'vera_mut_syntax' has a syntax error: invalid syntax "
            f"({here / 'vera_mut_syntax.py'}, line 2)")
    assert str(err.value) == want
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_an_error_raised_by_the_module_is_one_usage_line(here):
    # the user's module raising while imported is the user's to fix: one line, never "internal error"
    (here / "vera_mut_raises.py").write_text("raise RuntimeError('inside')\n")
    with pytest.raises(UsageError) as err:
        resolve_object("vera_mut_raises:x", "--impl")
    assert str(err.value) == "--impl: importing module 'vera_mut_raises' raised RuntimeError: inside"
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_usage_error_is_a_vera_error_and_a_value_error():
    assert issubclass(UsageError, VeraError) and issubclass(UsageError, ValueError)
