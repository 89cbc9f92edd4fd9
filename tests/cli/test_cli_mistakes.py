"""The CLI mistakes table (README "Command line"): every ordinary mistake ends in ONE line on stderr
that names what is wrong, and a non-zero exit; never a traceback, never a silent exit 0.

Each row: (id, packages it needs, argv builder, expected exit code, a phrase the line must contain); the exit
codes follow the README's table (2: the command line cannot be used as typed; 1: an input refused or a check
failed). tests/cli/test_exit_codes.py walks every command with every kind of mistake.
Rows whose packages are not installed are skipped; the rest run the installed ``vera-ref`` as a user would,
from a scratch folder.
"""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import VECTORS

VALID = str(VECTORS / "files" / "valid-01.safetensors")


def _peft_dir(tmp):
    d = tmp / "peft"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "VERA", "r": 4, "target_modules": ["q"]}))
    return d


def _template(tmp):
    path = tmp / "template.json"
    out = _vera(["conformance-vectors", "--template", str(path)], tmp)
    assert out.returncode == 0, out.stderr
    return path


def _report_of_another_kind(tmp):
    path = tmp / "report.json"
    path.write_text(json.dumps({"implementation": "x", "results": [{"check": "forward", "status": "passed"}]}))
    return path


def _not_onnx(tmp):
    path = tmp / "model.onnx"
    path.write_bytes(b"this is not a protobuf \x00\xff" * 8)
    return path


def _bare_factory(tmp):
    (tmp / "factories.py").write_text("import torch\ndef bare():\n    return torch.nn.Linear(4, 4)\n")
    return "factories:bare"


def _notjson(tmp):
    path = tmp / "dims.json"
    path.write_text("query: [4, 4]\n")
    return path


def _fifo(tmp):
    path = tmp / "pipe.safetensors"
    os.mkfifo(path)
    return path


ROWS = [
    ("no command", (), lambda t: [], 2, "required: COMMAND"),
    ("unknown command", (), lambda t: ["valdate", VALID], 2, "invalid choice: 'valdate'"),
    ("unknown option", (), lambda t: ["validate", "--strict", VALID], 2, "unrecognized arguments: --strict"),
    ("validate a missing file", (), lambda t: ["validate", str(t / "nope.safetensors")], 2, "no such file"),
    ("validate a folder", (), lambda t: ["validate", str(t)], 1, "directory"),
    ("validate a FIFO", (), lambda t: ["validate", str(_fifo(t))], 1, "not a regular file"),
    ("inspect an ONNX model", (), lambda t: ["inspect", str(_not_onnx(t))], 1, "header"),
    ("inspect a PEFT folder", (), lambda t: ["inspect", str(_peft_dir(t))], 1, "vera-ref convert --from-peft"),
    ("projection too large", (), lambda t: ["projection", "--seed", "0", "--r", "65536", "--n-in", "1000000",
                                            "--n-out", "1000000"], 2, "more than --max-elements"),
    ("projection seed negative", (), lambda t: ["projection", "--seed", "-1", "--r", "4", "--n-in", "4",
                                                "--n-out", "4"], 2, "--seed must be in [0, 2^64)"),
    ("projection group with peft-mt19937", (), lambda t: ["projection", "--seed", "1", "--r", "4", "--n-in", "4",
                                                          "--n-out", "4", "--generator", "peft-mt19937",
                                                          "--group", "2"], 2, "group applies to philox4x32-10"),
    ("convert --dims not JSON", (), lambda t: ["convert", "--from-peft", str(_peft_dir(t)), "--dims",
                                               str(_notjson(t)), "--out", str(t / "o.safetensors")],
     1, "--dims"),
    ("conformance without --impl", ("hypothesis",), lambda t: ["conformance"], 2, "--impl"),
    ("conformance bad module", ("hypothesis",), lambda t: ["conformance", "--impl", "nosuchmodule:make"], 2,
     "nosuchmodule"),
    ("conformance bad attribute", ("hypothesis",), lambda t: ["conformance", "--impl",
                                                              "vera_conformance.impls.reference:nosuch"], 2,
     "nosuch"),
    ("conformance --case not JSON", ("hypothesis",), lambda t: ["conformance", "--impl",
                                                                "vera_conformance.impls.reference:make",
                                                                "--case", "notjson"], 2, "--case"),
    ("conformance --only unknown", ("hypothesis",), lambda t: ["conformance", "--impl",
                                                               "vera_conformance.impls.reference:make",
                                                               "--only", "forwrd"], 2, "forwrd"),
    ("conformance-vectors on its own template", ("hypothesis",),
     lambda t: ["conformance-vectors", "--results", str(_template(t))], 1, "no result"),
    ("conformance-vectors on a report of another kind", ("hypothesis",),
     lambda t: ["conformance-vectors", "--results", str(_report_of_another_kind(t))], 1, "no result"),
    ("export-onnx --model without a colon", ("torch", "onnx"),
     lambda t: ["export-onnx", "--model", "factories", "--adapter", VALID, "--out", str(t / "m.onnx")], 2,
     "MODULE:NAME"),
    ("export-onnx --model returning a bare module", ("torch", "onnx"),
     lambda t: ["export-onnx", "--model", _bare_factory(t), "--adapter", VALID, "--out", str(t / "m.onnx")], 1,
     "bare Linear"),
    ("onnx-adapter --model not ONNX", ("onnx", "onnxruntime"),
     lambda t: ["onnx-adapter", VALID, "--model", str(_not_onnx(t)), "--out", str(t / "a.onnx_adapter")], 1,
     "not an ONNX model"),
    ("onnx-adapter --model an adapter file", ("onnx", "onnxruntime"),
     lambda t: ["onnx-adapter", VALID, "--model", VALID, "--out", str(t / "a.onnx_adapter")], 1,
     "not an ONNX model"),
    ("demo --targets misspelt", ("torch", "tokenizers"), lambda t: ["demo", "--targets", "qury", "--limit", "8",
                                                                   "--out", str(t / "res")], 2, "'qury'"),
    ("demo --steps 0", ("torch", "tokenizers"), lambda t: ["demo", "--steps", "0"], 2, "--steps"),
]


def _vera(argv, cwd):
    return subprocess.run([sys.executable, "-m", "vera_ref.cli", *argv], capture_output=True, text=True, cwd=cwd,
                          timeout=120, env={**os.environ, "VERA_DEBUG": ""})


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_mistake_is_one_line_and_non_zero(row, tmp_path):
    _, needs, argv, code, phrase = row
    for mod in needs:
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"needs {mod}")
    res = _vera(argv(tmp_path), tmp_path)
    lines = res.stderr.splitlines()
    assert "Traceback" not in res.stderr + res.stdout
    assert res.returncode != 0, f"exit 0 for a mistake: {res.stdout[-300:]}"
    if code is not None:
        assert res.returncode == code, res.stderr
    assert len(lines) == 1, res.stderr
    assert "internal error" not in lines[0], lines[0]  # a mistake is named, not caught as a crash of ours
    assert phrase in lines[0], lines[0]
    assert lines[0].startswith("vera-ref"), lines[0]


def test_impl_module_in_the_current_folder_is_found(tmp_path):
    pytest.importorskip("hypothesis")
    (tmp_path / "mymodule.py").write_text("from vera_conformance.impls.reference import make\n")
    res = _vera(["conformance", "--impl", "mymodule:make", "--only", "philox_kat"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert "1 passed, 0 failed" in res.stdout.splitlines()[-1]
