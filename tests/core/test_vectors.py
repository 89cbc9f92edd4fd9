"""spec 6: the vectors on disk are exactly what the reference regenerates, in the envelope."""
import json

import pytest

from conftest import ROOT, VECTORS
from vera_ref import vectors


def test_vectors_regenerate_without_difference():
    assert vectors.check() == []


def test_check_detects_drift(tmp_path):
    import shutil
    shutil.copytree(VECTORS, tmp_path / "v")
    p = tmp_path / "v" / "projections.json"
    p.write_text(p.read_text().replace('"r": 7', '"r": 8', 1))
    (tmp_path / "v" / "files" / "stray.safetensors").write_bytes(b"x")
    problems = vectors.check(tmp_path / "v")
    assert "projections.json: differs from the regenerated vector" in problems
    assert "files/stray.safetensors: on disk but not generated" in problems


@pytest.mark.parametrize("name", ["philox4x32_10.json", "projections.json", "math.json", "files.json"])
def test_envelope(name):
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((ROOT / "spec" / "schema" / "vectors.schema.json").read_text())
    env = json.loads((VECTORS / name).read_text())
    jsonschema.validate(env, schema)
    ids = [t["tcId"] for g in env["testGroups"] for t in g["tests"]]
    assert ids == list(range(1, len(ids) + 1)) and env["numberOfTests"] == len(ids)
