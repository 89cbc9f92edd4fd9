"""tools/matrix_table.py turns the matrix results into the README table (no torch needed)."""
import json
import subprocess
import sys

from conftest import ROOT


def _doc():
    return {"cells": [], "rel": 2.0**-13, "sizes": [[2, 7], [3, 12]], "results": {
        "BERT": {"train": {"status": "pass", "diff": 3.8e-17, "ratio": 0.0123},
                 "numpy": {"status": "pass", "diff": 5.25e-07, "ratio": 0.5},
                 "save_load": {"status": "pass", "diff": 0.0}, "peft_out": {"status": "pass", "diff": 4.8e-07, "scale": 3.14159},
                 "peft_in": {"status": "pass", "diff": 0.0}, "onnx_merged": {"status": "pass", "diff": 1.46e-06},
                 "onnx_hotswap": {"status": "pass", "diff": 2e-06}},
        "T5": {"train": {"status": "pass", "diff": 1e-9}, "numpy": {"status": "fail", "message": "AssertionError: a|b"},
               "save_load": {"status": "pass", "diff": 0.0}, "peft_out": {"status": "pass", "diff": 1e-6},
               "peft_in": {"status": "pass", "diff": 0.0},
               "onnx_merged": {"status": "xfail", "message": "ExportError: aten::foo is not supported"}},
    }}


def _run(tmp_path, doc):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(doc))
    return subprocess.run([sys.executable, str(ROOT / "tools" / "matrix_table.py"), "--json", str(path)],
                          capture_output=True, text=True)


def test_table_cells_and_exit_status(tmp_path):
    res = _run(tmp_path, _doc())
    lines = res.stdout.splitlines()
    assert lines[1] == ("| architecture | train | NumPy ref | save/load | PEFT out | PEFT in | ONNX merged | "
                        "ONNX hot-swap | outputs up to |")
    assert lines[3] == ("| BERT | 3.8e-17 (0.012 of bound) | 5.2e-07 (0.5 of bound) | 0 (bit-identical) | 4.8e-07 | "
                        "0 (bit-identical) | 1.5e-06 | 2.0e-06 | 3.1 |")
    assert lines[4] == ("| T5 | 1.0e-09 | **FAIL**: AssertionError: a\\|b | 0 (bit-identical) | 1.0e-06 | "
                        "0 (bit-identical) | upstream: ExportError: aten::foo is not supported | not run |  |")
    assert res.returncode == 1  # a failed and a missing cell
    doc = _doc()
    del doc["results"]["T5"]
    assert _run(tmp_path, doc).returncode == 0
