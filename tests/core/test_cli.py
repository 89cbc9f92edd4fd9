"""The vera-ref command line (issue: inspect, validate, projection, vectors, demo)."""
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, VECTORS
from vera_ref.adapter import sha256_hex
from vera_ref.cli import CORE_COMMANDS, plugin_entry_points
from vera_ref.projection import projection

FILES = json.loads((VECTORS / "files.json").read_text())


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "vera_ref.cli", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT)


def test_top_level_help_lists_every_command():
    res = run("--help")
    out = " ".join(res.stdout.split())  # argparse wraps long lines
    assert res.returncode == 0
    for c in CORE_COMMANDS:
        assert c.name in out and c.help in out
    plugins = plugin_entry_points()
    assert {"conformance", "conformance-vectors", "export-onnx", "onnx-adapter", "demo"} <= set(plugins)
    for name in plugins:  # listed without importing the plugin (its package may be missing)
        assert f"'vera-ref {name} --help' for more" in out


@pytest.mark.parametrize("name", [c.name for c in CORE_COMMANDS])
def test_each_command_explains_itself(name):
    res = run(name, "--help")
    description = next(c.description for c in CORE_COMMANDS if c.name == name)
    assert res.returncode == 0
    assert " ".join(description.split()[:6]) in " ".join(res.stdout.split())


@pytest.mark.parametrize("case", FILES["testGroups"][1]["tests"], ids=lambda c: c["file"])
def test_validate_rejects_with_one_line_naming_the_field(case):
    path = str(VECTORS / "files" / case["file"])
    res = run("validate", path)
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr == f"vera-ref validate: {path}: {case['error']['message']}\n"  # names the file, then the field


def test_validate_and_inspect_a_valid_file():
    case = FILES["testGroups"][0]["tests"][0]
    path = str(VECTORS / "files" / case["file"])
    res = run("validate", path)
    assert res.returncode == 0 and res.stdout.startswith(f"valid: {path} (r 4, 2 modules")
    res = run("inspect", path)
    assert res.returncode == 0
    for m in case["config"]["modules"]:
        assert case["config"]["module_prefix"] + m[0] in res.stdout
    for c in case["config"]["projection_sha256"]:
        assert c["A"] in res.stdout and c["B"] in res.stdout
    js = json.loads(run("inspect", "--json", path).stdout)
    assert set(js["tensors"]) == set(case["tensors"])


def test_missing_file_is_one_line():
    res = run("validate", "/nonexistent/a.safetensors")
    # a path typed that is not there: exit 2, like every value on the command line that cannot be used
    assert res.returncode == 2
    assert res.stderr == "vera-ref validate: error: /nonexistent/a.safetensors: no such file or folder\n"


def test_projection_prints_checksums_and_saves(tmp_path):
    out = tmp_path / "p.npz"
    res = run("projection", "--seed", "18446744073709551615", "--r", "5", "--n-in", "70", "--n-out", "9",
              "--out", str(out))
    A, B = projection(2**64 - 1, 5, 70, 9)
    assert res.returncode == 0
    assert f"A (5, 70) float32 sha256 {sha256_hex(A)}" in res.stdout
    assert f"B (9, 5) float32 sha256 {sha256_hex(B)}" in res.stdout
    z = np.load(out)
    assert np.array_equal(z["A"], A) and np.array_equal(z["B"], B)
    bad = run("projection", "--seed", "-1", "--r", "5", "--n-in", "7", "--n-out", "9")
    assert bad.returncode == 2 and bad.stderr == "vera-ref projection: error: --seed must be in [0, 2^64), got -1\n"


def test_vectors_check():
    res = run("vectors", "--check")
    assert res.returncode == 0 and "vectors: up to date" in res.stdout


def test_showcase_runs_end_to_end(tmp_path):
    res = run("showcase", "--out", str(tmp_path / "show"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "reloaded predictions bit-identical: True" in res.stdout
    assert "rejected: projection_sha256: A of group 0" in res.stdout
    assert "showcase passed" in res.stdout
    from vera_ref.adapter import load_adapter
    ad = load_adapter(tmp_path / "show" / "adapter.safetensors")
    assert ad.config.r == 32 and np.any(ad.lambda_b["layer"] != 0)


def test_showcase_writes_nothing_into_the_working_folder_and_says_who_made_the_file(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    res = run("showcase", cwd=work)
    assert res.returncode == 0, res.stdout + res.stderr
    assert list(work.iterdir()) == []  # by default a new temporary folder, never the working one
    folder = res.stdout.strip().splitlines()[-1].rpartition("files in ")[2].rstrip("/")
    from vera_ref.adapter import load_adapter
    try:
        assert load_adapter(f"{folder}/adapter.safetensors").config.provenance == {"made_by": "vera-ref showcase"}
    finally:
        import shutil
        shutil.rmtree(folder)


def test_inspect_json_gives_the_document_as_an_object():
    case = FILES["testGroups"][0]["tests"][0]
    js = json.loads(run("inspect", "--json", str(VECTORS / "files" / case["file"])).stdout)
    cfg = js["metadata"]["vera_config"]
    assert isinstance(cfg, dict) and cfg["r"] == case["config"]["r"]
    assert cfg["projection_sha256"] == case["config"]["projection_sha256"]
