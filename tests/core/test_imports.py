"""Import contracts (README "What is here"): dependencies point down only, no cycles, and importing a
package loads no optional package it does not need.

Layers, bottom up: vera_ref (NumPy only) < vera_torch, vera_jax < vera_onnx (its export needs torch,
imported lazily) < vera_conformance (its checks need only vera_ref; its impls adapt each backend) <
vera_demo. The graph is read from the source with ``ast`` (every import, at module level or inside a
function), so a lazy upward import is caught as well.
"""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGES = {"vera_ref": ROOT / "vera_ref", "vera_torch": ROOT / "backends" / "vera_torch",
            "vera_jax": ROOT / "backends" / "vera_jax", "vera_onnx": ROOT / "backends" / "vera_onnx",
            "vera_conformance": ROOT / "conformance" / "vera_conformance", "vera_demo": ROOT / "demo" / "vera_demo"}
# what each package (or sub-area) may import among ours
ALLOWED = {"vera_ref": set(), "vera_torch": {"vera_ref"}, "vera_jax": {"vera_ref"},
           "vera_onnx": {"vera_ref", "vera_torch"}, "vera_conformance": {"vera_ref"},
           "vera_conformance.impls": {"vera_ref", "vera_torch", "vera_onnx", "vera_jax", "vera_conformance"},
           "vera_demo": {"vera_ref", "vera_torch", "vera_onnx"}}


def _modules():
    for pkg, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            yield ".".join([pkg, *parts]), path, path.name == "__init__.py"


def _imports(name: str, path: Path, is_pkg: bool):
    """(imported module, line, at module level?) for every import statement of one file."""
    tree = ast.parse(path.read_text(), str(path))
    top = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, node.lineno, id(node) in top
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
                targets = [mod] if node.module else [f"{mod}.{a.name}" for a in node.names]
            else:
                targets = [node.module]
            for t in targets:
                yield t, node.lineno, id(node) in top


def _area(mod: str) -> str:
    return "vera_conformance.impls" if mod.startswith("vera_conformance.impls") else mod.split(".")[0]


def test_dependencies_point_down_only():
    bad = []
    for name, path, is_pkg in _modules():
        for target, line, _ in _imports(name, path, is_pkg):
            pkg = target.split(".")[0]
            if pkg in PACKAGES and pkg != name.split(".")[0] and pkg not in ALLOWED[_area(name)]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_no_import_cycles_between_modules():
    ours = {n for n, _, _ in _modules()}
    graph = {}
    for name, path, is_pkg in _modules():
        deps = set()
        for target, _, _ in _imports(name, path, is_pkg):
            while target and target not in ours:  # `from .x import f` names f: walk up to the module
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + ".") and not target.endswith("__init__"):
                deps.add(target)
        graph[name] = {d for d in deps if not (d in PACKAGES and d == name.split(".")[0])}
    state, stack, cycles = {}, [], []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for d in graph.get(n, ()):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_graph_reader_sees_an_upward_import(tmp_path):
    """The check above must be able to fail: a lazy upward import inside a function is found."""
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from vera_torch import VeraModel\n    from . import sibling\n")
    got = list(_imports("vera_ref.m", f, False))
    assert ("vera_torch", 2, False) in got and ("vera_ref.sibling", 3, False) in got


def _loaded_after(code: str, block: tuple[str, ...] = ()) -> set[str]:
    prelude = "".join(f"sys.modules[{b!r}] = None\n" for b in block)
    res = subprocess.run([sys.executable, "-c", f"import sys\n{prelude}{code}\n"
                          "print(' '.join(sorted(m.split('.')[0] for m, v in sys.modules.items() if v is not None)))"],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    return set(res.stdout.split())


OPTIONAL = {"torch", "hypothesis", "onnx", "onnxruntime", "jax", "flax", "peft", "transformers", "safetensors",
            "tokenizers", "matplotlib"}


def test_import_vera_ref_loads_no_optional_package():
    loaded = _loaded_after("import vera_ref, vera_ref.cli, vera_ref.generators, vera_ref.peft_interop")
    assert not loaded & OPTIONAL, loaded & OPTIONAL
    assert "numpy" in loaded  # the check sees imports at all


def test_vera_ref_cli_help_runs_with_every_optional_package_blocked():
    code = ("import contextlib, io\nfrom vera_ref.cli import main\nhelp = io.StringIO()\n"
            "with contextlib.redirect_stdout(help):\n    try:\n        main(['--help'])\n"
            "    except SystemExit as e:\n        assert e.code == 0\nassert 'conformance' in help.getvalue()")
    loaded = _loaded_after(code, block=tuple(sorted(OPTIONAL)))
    assert not loaded & OPTIONAL


def test_import_vera_onnx_loads_no_torch():
    pytest.importorskip("onnxruntime")
    loaded = _loaded_after("import vera_onnx\nfrom vera_onnx import VeraOnnxSession, onnx_adapter")
    assert "onnxruntime" in loaded and "torch" not in loaded
