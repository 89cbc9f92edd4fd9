"""A new user's first hour with ``vera-ref`` (issue 21 part 2, issue 23 finding 5): file paths as ``--impl`` /
``--model``, a NumPy-only install's ``--help`` and messages, output that is valid UTF-8 whatever a file or a
file name holds, and messages that name the path they are about."""
import importlib.util
import os
import subprocess
import sys

import pytest

from conftest import ROOT, VECTORS
from vera_ref.resolve import UsageError, resolve_object

VALID = VECTORS / "files" / "valid-01.safetensors"
OPTIONAL = ("torch", "safetensors", "onnx", "onnxruntime", "onnxscript", "hypothesis", "peft", "transformers",
            "tokenizers", "matplotlib", "tqdm", "jax", "jaxlib", "flax", "optax")


def vera(argv, cwd, block=(), encoding="utf-8:strict"):
    """Run vera-ref in a subprocess with ``block``ed packages made unimportable (a NumPy-only install when all
    optional ones are) and stdout/stderr in a strict encoding; returns (rc, stdout text, stderr text)."""
    code = ("import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in block)
            + "from vera_ref.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    env = {**os.environ, "VERA_DEBUG": "", "PYTHONIOENCODING": encoding, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, cwd=cwd, timeout=300, env=env)
    enc = encoding.partition(":")[0]
    return res.returncode, res.stdout.decode(enc), res.stderr.decode(enc)  # strict: raises on any bad byte


# --- --impl / --model as a file path -------------------------------------------------------------------

@pytest.fixture
def here(tmp_path, monkeypatch):
    """A scratch current folder; sys.path and sys.modules restored afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


@pytest.mark.parametrize("form", ["./vera_fh_wrap.py", "vera_fh_wrap.py", "{abs}/vera_fh_wrap.py", "./vera_fh_wrap",
                                  "{abs}/vera_fh_wrap"])
def test_a_file_path_names_a_module(here, form):
    (here / "vera_fh_wrap.py").write_text("def make():\n    return 'made'\n")
    spec = form.format(abs=here) + ":make"
    assert resolve_object(spec, "--impl")() == "made"
    # asked again (the CLI checks it, then the runner loads it): the same module, run once
    assert resolve_object(spec, "--impl") is resolve_object(f"{here}/vera_fh_wrap.py:make", "--impl")


def test_a_file_in_a_sub_folder_imports_the_files_beside_it(here):
    (here / "sub" / "dir").mkdir(parents=True)
    (here / "sub" / "dir" / "vera_fh_helper.py").write_text("VALUE = 41\n")
    (here / "sub" / "dir" / "vera_fh_w.py").write_text("import vera_fh_helper\ndef make():\n"
                                                       "    return vera_fh_helper.VALUE + 1\n")
    assert resolve_object("sub/dir/vera_fh_w.py:make", "--model")() == 42


def test_a_file_named_like_an_installed_module_does_not_shadow_it(here):
    import json
    (here / "json.py").write_text("def make():\n    return 'mine'\n")
    assert resolve_object("./json.py:make", "--impl")() == "mine"
    assert sys.modules["json"] is json  # the standard library's json is still json


@pytest.mark.parametrize("spec, message", [
    ("./vera_fh_nope.py:make", "--impl: no such file: ./vera_fh_nope.py"),
    ("sub/vera_fh_nope.py:make", "--impl: no such file: sub/vera_fh_nope.py"),
    ("./folder.py:make", "--impl: ./folder.py is a folder, not a Python file (name a .py file or a MODULE)"),
    ("./vera_fh_syntax.py:make", "--impl: file './vera_fh_syntax.py' has a syntax error: invalid syntax "
                                 "({here}/vera_fh_syntax.py, line 1)"),
    ("./vera_fh_ok.py:nope", "--impl: file './vera_fh_ok.py' has no attribute 'nope'"),
    ("./vera_fh_raises.py:make", "--impl: importing file './vera_fh_raises.py' raised RuntimeError: inside"),
    ("./vera_fh_needs.py:make", "--impl: file './vera_fh_needs.py' needs the package 'vera_fh_absent', "
                                "which is not installed"),
])
def test_a_file_that_cannot_be_used_is_one_usage_line(here, spec, message):
    (here / "folder.py").mkdir()
    (here / "vera_fh_syntax.py").write_text("def make(:\n")
    (here / "vera_fh_ok.py").write_text("x = 1\n")
    (here / "vera_fh_raises.py").write_text("raise RuntimeError('inside')\n")
    (here / "vera_fh_needs.py").write_text("import vera_fh_absent\n")
    with pytest.raises(UsageError) as err:
        resolve_object(spec, "--impl")
    assert str(err.value) == message.format(here=here)
    if "nope" not in spec:  # a file that failed while it ran leaves no half module behind
        assert not any(n.startswith("vera_fh_") for n in sys.modules)


@pytest.mark.parametrize("form", ["./wrap_mine.py", "wrap_mine.py", "{abs}/wrap_mine.py", "sub/dir/wrap_mine.py"])
def test_conformance_takes_a_file_path(tmp_path, form):
    pytest.importorskip("hypothesis")
    folder = tmp_path / "sub" / "dir" if form.startswith("sub/") else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "wrap_mine.py").write_text("from vera_conformance.impls.reference import make\n")
    rc, out, err = vera(["conformance", "--impl", form.format(abs=tmp_path) + ":make", "--only", "philox_kat"],
                        tmp_path)
    assert rc == 0, err
    assert out.splitlines()[-1] == "1 passed, 0 failed, 0 skipped"


def test_export_onnx_takes_a_file_path(tmp_path):
    for mod in ("torch", "onnx", "onnxruntime"):
        pytest.importorskip(mod)
    (tmp_path / "x.py").write_text("def factory():\n    raise ValueError('the file was found and called')\n")
    rc, out, err = vera(["export-onnx", "--model", "./x.py:factory", "--adapter", str(VALID), "--out",
                         str(tmp_path / "m.onnx")], tmp_path)
    assert (rc, err) == (1, "vera-ref export-onnx: --model ./x.py:factory: the factory raised ValueError: the file "
                            "was found and called\n")


# --- a NumPy-only install ------------------------------------------------------------------------------

PLUGINS = ("conformance", "conformance-vectors", "demo", "export-onnx", "onnx-adapter")


def _listed(help_text):
    """The command names listed under COMMAND in the help (one per line, indented 4)."""
    return {line.split()[0] for line in help_text.splitlines() if line.startswith("    ") and line.split()
            and not line.startswith("     ")}


def test_help_in_a_numpy_only_install_lists_only_what_runs_there(tmp_path):
    rc, out, err = vera(["--help"], tmp_path, block=OPTIONAL)
    assert rc == 0 and err == ""
    assert _listed(out) == {"inspect", "validate", "projection", "vectors", "convert", "showcase"}
    extra = out.partition("commands that need packages not installed here:")[2]
    assert " ".join(extra.split()) == (
        "conformance, conformance-vectors needs: pip install 'vera-ref[conformance]' "
        "demo needs: pip install 'vera-ref[torch,onnx,peft,demo]' "
        "export-onnx needs: pip install 'vera-ref[torch,onnx]' "
        "onnx-adapter needs: pip install 'vera-ref[onnx]'")


def test_help_with_one_extra_missing_lists_the_rest():
    if not all(importlib.util.find_spec(m) for m in ("torch", "onnx", "onnxruntime", "hypothesis")):
        pytest.skip("needs the torch, onnx and conformance extras")
    rc, out, err = vera(["--help"], ROOT, block=("hypothesis",))
    assert rc == 0
    assert {"export-onnx", "onnx-adapter"} <= _listed(out) and not {"conformance", "conformance-vectors"} & _listed(out)
    assert "conformance, conformance-vectors  needs: pip install 'vera-ref[conformance]'" in out


@pytest.mark.parametrize("command, line", [
    ("demo", "the demo command needs torch, safetensors, onnx, onnxruntime, peft, transformers, tokenizers, "
             "matplotlib, tqdm, not installed here: pip install 'vera-ref[torch,onnx,peft,demo]'"),
    ("export-onnx", "the export-onnx command needs torch, onnx, onnxruntime, not installed here: "
                    "pip install 'vera-ref[torch,onnx]'"),
])
def test_a_missing_extra_is_named_all_at_once(tmp_path, command, line):
    for args in ([command], [command, "--help"]):
        rc, out, err = vera(args, tmp_path, block=OPTIONAL)
        assert (rc, out, err) == (2, "", f"vera-ref {command}: error: {line}\n")


# --- output is valid UTF-8 (issue 23 finding 5) ---------------------------------------------------------

def test_a_non_utf8_file_name_is_escaped_not_a_crash(tmp_path):
    name = os.fsdecode(b"v\xff.safetensors")  # a lone surrogate in Python's view of the name
    (tmp_path / name).write_bytes(VALID.read_bytes())
    for cmd in (["validate"], ["inspect"], ["inspect", "--json"]):
        rc, out, err = vera([*cmd, name], tmp_path)
        assert rc == 0 and err == "", err
        assert "v\\udcff.safetensors" in out  # the byte is shown as an escape, never written raw
    rc, out, err = vera(["validate", os.fsdecode(b"gone\xff.safetensors")], tmp_path)
    assert (rc, err) == (2, "vera-ref validate: error: gone\\udcff.safetensors: no such file or folder\n")


def test_text_the_terminal_cannot_encode_is_escaped(tmp_path):
    # an ASCII-only stdout (LANG=C on an old system, a strict pipe): a name or value outside it is escaped
    raw = (VECTORS / "files" / "valid-06.safetensors").read_bytes()
    assert raw.count(b"vectors.py") == 1
    name = "adapt\u00e9r.safetensors"
    (tmp_path / name).write_bytes(raw.replace(b"vectors.py", "vecto\u00e9.py".encode()))  # same length
    for cmd, shown in ((["validate"], ["adapt\\xe9r.safetensors"]),
                       (["inspect"], ["adapt\\xe9r.safetensors", "vecto\\u00e9.py"]),
                       (["inspect", "--json"], ["adapt\\u00e9r.safetensors", "vecto\\u00e9.py"])):
        rc, out, err = vera([*cmd, name], tmp_path, encoding="ascii:strict")
        assert rc == 0 and err == "", err
        assert all(s in out for s in shown), out
    rc, out, err = vera(["validate", "gon\u00e9.safetensors"], tmp_path, encoding="ascii:strict")
    assert (rc, err) == (2, "vera-ref validate: error: gon\\xe9.safetensors: no such file or folder\n")


def test_a_lone_surrogate_in_the_metadata_never_breaks_the_output(tmp_path):
    # "\udc80" in the document (issue 23 finding 4): whether the reader accepts or refuses the file, the CLI
    # writes valid UTF-8 (a strict stdout would raise) and never exits 3
    raw = (VECTORS / "files" / "valid-06.safetensors").read_bytes()
    path = tmp_path / "surrogate.safetensors"
    path.write_bytes(raw.replace(b"vectors.py", b"\\\\udc80xyz"))
    for cmd in (["inspect"], ["inspect", "--json"], ["validate"]):
        rc, out, err = vera([*cmd, str(path)], tmp_path)
        assert rc in (0, 1) and len(err.splitlines()) == (rc == 1), err
        assert "\udc80" not in out + err


# --- messages name the path --------------------------------------------------------------------------

def test_convert_from_a_missing_folder_says_so(tmp_path):
    rc, out, err = vera(["convert", "--from-peft", str(tmp_path / "nope"), "--out", str(tmp_path / "o.safetensors")],
                        tmp_path)
    assert (rc, err) == (2, f"vera-ref convert: error: --from-peft {tmp_path / 'nope'}: no such file or folder\n")


def test_validate_a_folder_names_it(tmp_path):
    rc, out, err = vera(["validate", str(tmp_path)], tmp_path)
    assert (rc, err) == (1, f"vera-ref validate: {tmp_path}: is a directory, not a file\n")


def test_onnx_adapter_with_a_folder_as_model_is_one_line_naming_it(tmp_path):
    pytest.importorskip("onnxruntime")
    rc, out, err = vera(["onnx-adapter", str(VALID), "--model", str(tmp_path), "--out", str(tmp_path / "a.oa")],
                        tmp_path)
    assert (rc, err) == (1, f"vera-ref onnx-adapter: --model {tmp_path}: is a folder, not an ONNX model file\n")
