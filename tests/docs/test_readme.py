"""Every ```python block of the README runs as written (a README example is a test)."""
import re

import pytest

from conftest import ROOT

OPTIONAL = {"torch", "onnx", "onnxruntime", "jax", "flax", "optax", "peft", "transformers", "hypothesis",
            "vera_torch", "vera_onnx", "vera_jax", "vera_conformance"}
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 1


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example(index, tmp_path, monkeypatch):
    for mod in sorted(set(re.findall(r"^(?:from|import) (\w+)", BLOCKS[index], flags=re.M)) & OPTIONAL):
        pytest.importorskip(mod)  # a block for an optional backend skips where it is not installed
    monkeypatch.chdir(tmp_path)
    exec(compile(BLOCKS[index], f"README.md block {index + 1}", "exec"), {"__name__": "__readme__"})
