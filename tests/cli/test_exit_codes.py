"""The exit-code rule of the README's "Command line" table, walked over EVERY command with every kind of mistake.

    0  done (every check that ran passed)
    1  an input that was read and refused (invalid, of another kind, a folder where a file belongs), code the
       user named that raised or returned the wrong thing when called, or a check that failed
    2  the command line cannot be used as typed, or this install lacks the command's packages: nothing was read
       or run (unknown option, missing or bad value, a path that is not there, an output path of the wrong kind,
       a MODULE:NAME / FILE.py:NAME that does not import)

Every row runs the command as a user would, in a scratch folder, with a strict UTF-8 stdout and stderr, and
checks the exit code, that stderr is exactly one line starting with "vera-ref" (empty on success), no traceback,
no "internal error", and the phrase. "missing extra" runs the command with every optional package blocked
(a NumPy-only install, simulated by ``sys.modules[name] = None`` before vera_ref.cli is imported).
"""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import VECTORS
from vera_ref.cli import CORE_COMMANDS, plugin_entry_points

VALID = str(VECTORS / "files" / "valid-01.safetensors")
OPTIONAL = ("torch", "safetensors", "onnx", "onnxruntime", "onnxscript", "hypothesis", "peft", "transformers",
            "tokenizers", "matplotlib", "tqdm", "jax", "jaxlib", "flax", "optax")
KINDS = ("bad value", "missing file", "wrong kind of file", "unknown flag", "missing extra")
COMMANDS = ("inspect", "validate", "projection", "vectors", "convert", "showcase", "export-onnx", "onnx-adapter",
            "conformance", "conformance-vectors", "demo")
NOT_APPLICABLE = {
    ("vectors", "missing file"): "reads only the spec/vectors shipped inside the package; names no path",
    ("vectors", "wrong kind of file"): "reads only the spec/vectors shipped inside the package; names no path",
}
DEMO = ("torch", "safetensors", "onnx", "onnxruntime", "peft", "transformers", "tokenizers", "matplotlib", "tqdm")
EXPORT = ("torch", "onnx", "onnxruntime")
ORT = ("onnx", "onnxruntime")
HYP = ("hypothesis",)


class Scratch:
    """Files a mistake needs, made in the row's scratch folder."""

    def __init__(self, tmp):
        self.t = tmp

    def __truediv__(self, name):
        return str(self.t / name)

    def folder(self):
        (self.t / "folder").mkdir(exist_ok=True)
        return str(self.t / "folder")

    def junk(self):
        (self.t / "junk.bin").write_bytes(b"\x00\xff this is no kind of file anyone reads" * 4)
        return str(self.t / "junk.bin")

    def notjson(self):
        (self.t / "notjson.json").write_text("query: [4, 4]\n")
        return str(self.t / "notjson.json")

    def deep(self):  # nested 100,000 deep (issue 23 finding 8): not a --dims file, and no RecursionError escapes
        (self.t / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
        return str(self.t / "deep.json")

    def peft(self):
        d = self.t / "peft"
        d.mkdir(exist_ok=True)
        (d / "adapter_config.json").write_text(json.dumps({"peft_type": "VERA", "r": 4, "target_modules": ["q"]}))
        return str(d)

    def linear_adapter(self):
        from vera_ref.adapter import new_adapter, save_adapter
        path = self.t / "linear.safetensors"
        save_adapter(new_adapter([("q", 8, 8)], r=4, seed=1), path)
        return str(path)

    def py(self, name, body):
        path = self.t / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
        return name

    def template(self):
        path = self.t / "template.json"
        res = vera(["conformance-vectors", "--template", str(path)], self.t)
        assert res.returncode == 0, res.stderr
        return str(path)


def vera(argv, cwd, block=()):
    code = ("import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in block)
            + "from vera_ref.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    env = {**os.environ, "VERA_DEBUG": "", "PYTHONIOENCODING": "utf-8:strict"}
    return subprocess.run([sys.executable, "-c", code, *map(str, argv)], capture_output=True, cwd=cwd,
                          timeout=300, env=env)


ROWS: list = []


def add(command, kind, needs, argv, code, phrase=None, marks=()):
    ROWS.append(pytest.param(command, kind, needs, argv, code, phrase, marks=marks,
                             id=f"{command} | {kind} | {len(ROWS)}"))


for cmd in ("inspect", "validate"):
    add(cmd, "bad value", (), lambda s, c=cmd: [c, "--max-projection-elements", "many", VALID], 2, "invalid int value")
    add(cmd, "missing file", (), lambda s, c=cmd: [c, s / "nope.safetensors"], 2, "nope.safetensors: no such file")
    add(cmd, "wrong kind of file", (), lambda s, c=cmd: [c, s.junk()], 1, "junk.bin: ")
    add(cmd, "wrong kind of file", (), lambda s, c=cmd: [c, s.folder()], 1, "folder: is a directory, not a file")
    add(cmd, "wrong kind of file", (), lambda s, c=cmd: [c, s.peft()], 1, "vera-ref convert --from-peft")
    add(cmd, "unknown flag", (), lambda s, c=cmd: [c, "--strict", VALID], 2, "unrecognized arguments: --strict")
    add(cmd, "missing extra", (), lambda s, c=cmd: [c, VALID], 0)

PROJ = ["projection", "--r", "4", "--n-in", "8", "--n-out", "8"]
add("projection", "bad value", (), lambda s: PROJ + ["--seed", "-1"], 2, "--seed must be in [0, 2^64), got -1")
add("projection", "bad value", (), lambda s: PROJ + ["--seed", str(2**64)], 2, "--seed must be in [0, 2^64)")
add("projection", "bad value", (), lambda s: PROJ + ["--seed", "x"], 2, "invalid int value: 'x'")
add("projection", "bad value", (), lambda s: ["projection", "--seed", "1", "--r", "0", "--n-in", "8", "--n-out", "8"],
    2, "--r must be >= 1")
add("projection", "bad value", (), lambda s: PROJ + ["--seed", "1", "--generator", "peft-mt19937", "--group", "2"],
    2, "applies to philox4x32-10")
add("projection", "missing file", (), lambda s: PROJ + ["--seed", "1", "--out", s / "nodir/ab.npz"], 2,
    "does not exist")
add("projection", "wrong kind of file", (), lambda s: PROJ + ["--seed", "1", "--out", s.folder()], 2, "is a folder")
add("projection", "unknown flag", (), lambda s: PROJ + ["--seed", "1", "--strict"], 2, "unrecognized arguments")
add("projection", "missing extra", (), lambda s: PROJ + ["--seed", "1", "--out", s / "ab.npz"], 0)

add("vectors", "bad value", (), lambda s: ["vectors", "--check", "--write"], 2, "not allowed with argument")
add("vectors", "unknown flag", (), lambda s: ["vectors", "--check", "--strict"], 2, "unrecognized arguments")
add("vectors", "missing extra", (), lambda s: ["vectors", "--check"], 0)

add("convert", "bad value", (), lambda s: ["convert", "--from-peft", s.peft(), "--in-features", "0", "--out",
                                           s / "o.safetensors"], 2, "--in-features must be >= 1, got 0")
add("convert", "bad value", (), lambda s: ["convert", "--from-peft", s.peft()], 2, "required: --out")
add("convert", "missing file", (), lambda s: ["convert", "--from-peft", s / "nope", "--out", s / "o.safetensors"], 2,
    "--from-peft")
add("convert", "missing file", (), lambda s: ["convert", "--to-peft", s / "nope.safetensors", "--out", s / "p"], 2,
    "nope.safetensors: no such file")
add("convert", "missing file", (), lambda s: ["convert", "--from-peft", s.peft(), "--dims", s / "nope.json",
                                              "--out", s / "o.safetensors"], 2, "--dims")
add("convert", "missing file", (), lambda s: ["convert", "--to-peft", VALID, "--out", s / "nodir/p"], 2,
    "does not exist")
add("convert", "wrong kind of file", (), lambda s: ["convert", "--to-peft", s.peft(), "--out", s / "p"], 1,
    "use `vera-ref convert --from-peft`")
add("convert", "wrong kind of file", (), lambda s: ["convert", "--from-peft", s.peft(), "--dims", s.notjson(),
                                                    "--out", s / "o.safetensors"], 1, "--dims file: not valid JSON")
add("convert", "wrong kind of file", (), lambda s: ["convert", "--from-peft", s.peft(), "--dims", s.deep(),
                                                    "--out", s / "o.safetensors"], 1, "--dims file: nested deeper than")
add("convert", "wrong kind of file", (), lambda s: ["convert", "--from-peft", s.junk(), "--out", s / "o.safetensors"],
    1, "is a file, not a PEFT checkpoint folder")
add("convert", "wrong kind of file", (), lambda s: ["convert", "--from-peft", s.peft(), "--out", s.folder()], 2,
    "is a folder")
add("convert", "unknown flag", (), lambda s: ["convert", "--from-peft", s.peft(), "--out", s / "o", "--strict"], 2,
    "unrecognized arguments")
add("convert", "missing extra", (), lambda s: ["convert", "--to-peft", s.linear_adapter(), "--out", s / "p"], 0)

add("showcase", "bad value", (), lambda s: ["showcase", "--out"], 2, "expected one argument")
add("showcase", "missing file", (), lambda s: ["showcase", "--out", s / "nodir/show"], 2, "does not exist")
add("showcase", "wrong kind of file", (), lambda s: ["showcase", "--out", s.junk()], 2, "is a file; name a folder")
add("showcase", "unknown flag", (), lambda s: ["showcase", "--strict"], 2, "unrecognized arguments")
add("showcase", "missing extra", (), lambda s: ["showcase", "--out", s / "show"], 0)

EXP = ["export-onnx", "--adapter", VALID]
FACTORY = "import torch\ndef bare():\n    return torch.nn.Linear(4, 4)\n"
add("export-onnx", "bad value", EXPORT, lambda s: EXP + ["--model", "factories", "--out", s / "m.onnx"], 2,
    "MODULE:NAME")
add("export-onnx", "bad value", EXPORT, lambda s: EXP + ["--model", "f:g", "--out", s / "m.onnx", "--mode", "multi"],
    2, "--capacity N is needed")
add("export-onnx", "bad value", EXPORT, lambda s: EXP + ["--model", "f:g", "--out", s / "m.onnx", "--mode", "lora"],
    2, "invalid choice: 'lora'")
add("export-onnx", "missing file", EXPORT, lambda s: EXP + ["--model", "./nope.py:make", "--out", s / "m.onnx"], 2,
    "--model ./nope.py: no such file")
add("export-onnx", "missing file", EXPORT, lambda s: ["export-onnx", "--adapter", s / "nope.safetensors", "--model",
                                                      s.py("f.py", FACTORY) + ":bare", "--out", s / "m.onnx"], 2,
    "--adapter")
add("export-onnx", "missing file", EXPORT, lambda s: EXP + ["--model", s.py("f.py", FACTORY) + ":bare", "--out",
                                                            s / "nodir/m.onnx"], 2, "does not exist")
add("export-onnx", "wrong kind of file", EXPORT, lambda s: EXP + ["--model", s.py("f.py", FACTORY) + ":bare", "--out",
                                                                  s / "m.onnx"], 1, "returned a bare Linear")
add("export-onnx", "unknown flag", EXPORT, lambda s: EXP + ["--model", "f:g", "--out", s / "m.onnx", "--strict"], 2,
    "unrecognized arguments")
add("export-onnx", "missing extra", (), lambda s: EXP + ["--model", "f:g", "--out", s / "m.onnx"], 2,
    "needs torch, onnx, onnxruntime, not installed here: pip install 'vera-ref[torch,onnx]'")

add("onnx-adapter", "bad value", ORT, lambda s: ["onnx-adapter", VALID, "--model", s.junk()], 2, "required: --out")
add("onnx-adapter", "bad value", ORT, lambda s: ["onnx-adapter", VALID, "--model", s.junk(), "--out", s.folder()], 2,
    "is a folder")
add("onnx-adapter", "missing file", ORT, lambda s: ["onnx-adapter", s / "nope.safetensors", "--model", s.junk(),
                                                    "--out", s / "a.oa"], 2, "nope.safetensors: no such file")
add("onnx-adapter", "missing file", ORT, lambda s: ["onnx-adapter", VALID, "--model", s / "nope.onnx", "--out",
                                                    s / "a.oa"], 2, "--model")
add("onnx-adapter", "wrong kind of file", ORT, lambda s: ["onnx-adapter", VALID, "--model", s.folder(), "--out",
                                                          s / "a.oa"], 1, "folder: is a folder, not an ONNX model")
add("onnx-adapter", "wrong kind of file", ORT, lambda s: ["onnx-adapter", VALID, "--model", s.junk(), "--out",
                                                          s / "a.oa"], 1, "not an ONNX model")
add("onnx-adapter", "wrong kind of file", ORT, lambda s: ["onnx-adapter", VALID, "--model", VALID, "--out",
                                                          s / "a.oa"], 1, "this is a safetensors file")
add("onnx-adapter", "unknown flag", ORT, lambda s: ["onnx-adapter", VALID, "--model", "m", "--out", "o", "--strict"],
    2, "unrecognized arguments")
add("onnx-adapter", "missing extra", (), lambda s: ["onnx-adapter", VALID, "--model", "m.onnx", "--out", "a.oa"], 2,
    "needs onnx, onnxruntime, not installed here: pip install 'vera-ref[onnx]'")

REF = ["conformance", "--impl", "vera_conformance.impls.reference:make"]
add("conformance", "bad value", HYP, lambda s: ["conformance"], 2, "--impl")
add("conformance", "bad value", HYP, lambda s: ["conformance", "--impl", "wrap"], 2, "MODULE:NAME")
add("conformance", "bad value", HYP, lambda s: REF + ["--dtype", "float99"], 2, "--dtype: unknown dtype 'float99'")
add("conformance", "bad value", HYP, lambda s: REF + ["--only", "forwrd"], 2, "--only: unknown check 'forwrd'")
add("conformance", "bad value", HYP, lambda s: REF + ["--device", "tpu"], 2, "--device: unknown device 'tpu'")
add("conformance", "bad value", HYP, lambda s: REF + ["--max-examples", "0"], 2, "--max-examples must be >= 1")
add("conformance", "bad value", HYP, lambda s: REF + ["--only", ","], 2, "--only names no check")
add("conformance", "bad value", HYP, lambda s: REF + ["--only", "forward", "--case", "notjson"], 2, "--case is not JSON")
add("conformance", "bad value", HYP, lambda s: ["conformance", "--impl", s.py("syn.py", "def make(:\n") + ":make"], 2,
    "has a syntax error")
add("conformance", "missing file", HYP, lambda s: ["conformance", "--impl", "./nope.py:make"], 2,
    "--impl: no such file: ./nope.py")
add("conformance", "missing file", HYP, lambda s: ["conformance", "--impl", "nosuchmodule:make"], 2,
    "cannot import module 'nosuchmodule'")
add("conformance", "missing file", HYP, lambda s: ["conformance", "--impl", s.py("w.py", "x = 1\n") + ":make"], 2,
    "has no attribute 'make'")
add("conformance", "missing file", HYP, lambda s: REF + ["--skips", s / "skips.txt"], 2, "--skips")
add("conformance", "missing file", HYP, lambda s: REF + ["--json-report", s / "nodir/r.json"], 2, "does not exist")
add("conformance", "wrong kind of file", HYP, lambda s: ["conformance", "--impl",
                                                         s.py("w.py", "def make():\n    return 5\n") + ":make"], 1,
    "not an implementation")
add("conformance", "wrong kind of file", HYP, lambda s: REF + ["--skips", s.folder()], 1, "not a list of test ids")
add("conformance", "unknown flag", HYP, lambda s: REF + ["--strict"], 2, "unrecognized arguments")
add("conformance", "missing extra", (), lambda s: REF, 2, "pip install 'vera-ref[conformance]'")

add("conformance-vectors", "bad value", HYP, lambda s: ["conformance-vectors", "--template", "a", "--results", "b"], 2,
    "not allowed with argument")
add("conformance-vectors", "missing file", HYP, lambda s: ["conformance-vectors", "--results", s / "nope.json"], 2,
    "nope.json: no such file")
add("conformance-vectors", "missing file", HYP, lambda s: ["conformance-vectors", "--template", s / "nodir/t.json"], 2,
    "does not exist")
add("conformance-vectors", "wrong kind of file", HYP, lambda s: ["conformance-vectors", "--results", s.notjson()], 1,
    "not a JSON file")
add("conformance-vectors", "wrong kind of file", HYP, lambda s: ["conformance-vectors", "--results", s.folder()], 1,
    "is a folder")
add("conformance-vectors", "wrong kind of file", HYP, lambda s: ["conformance-vectors", "--results", s.template()], 1,
    "no result to check")
add("conformance-vectors", "unknown flag", HYP, lambda s: ["conformance-vectors", "--template", s / "t.json",
                                                           "--strict"], 2,
    "unrecognized arguments")
add("conformance-vectors", "missing extra", (), lambda s: ["conformance-vectors", "--template", s / "t.json"], 2,
    "pip install 'vera-ref[conformance]'")

add("demo", "bad value", DEMO, lambda s: ["demo", "--steps", "0"], 2, "--steps")
add("demo", "missing file", DEMO, lambda s: ["demo", "--model-dir", s / "nope", "--limit", "8", "--steps", "1",
                                             "--out", s / "res"], 2, "nope")
add("demo", "wrong kind of file", DEMO, lambda s: ["demo", "--out", s.junk(), "--limit", "8", "--steps", "1"], 2,
    "junk.bin")
add("demo", "unknown flag", DEMO, lambda s: ["demo", "--strict"], 2, "unrecognized arguments")
add("demo", "missing extra", (), lambda s: ["demo"], 2,
    "needs torch, safetensors, onnx, onnxruntime, peft, transformers, tokenizers, matplotlib, tqdm, not installed "
    "here: pip install 'vera-ref[torch,onnx,peft,demo]'")


def test_the_walk_covers_every_command_and_every_kind_of_mistake():
    assert set(COMMANDS) == {c.name for c in CORE_COMMANDS} | set(plugin_entry_points())
    covered = {(p.values[0], p.values[1]) for p in ROWS} | set(NOT_APPLICABLE)
    assert covered == {(c, k) for c in COMMANDS for k in KINDS}, {(c, k) for c in COMMANDS for k in KINDS} - covered
    assert not set(NOT_APPLICABLE) & {(p.values[0], p.values[1]) for p in ROWS}
    for p in ROWS:  # a plugin command's missing extra is exit 2; a core command runs with NumPy alone
        if p.values[1] == "missing extra":
            assert p.values[4] == (0 if p.values[0] in {c.name for c in CORE_COMMANDS} else 2)


@pytest.mark.parametrize("command, kind, needs, argv, code, phrase", ROWS)
def test_every_mistake_gets_its_exit_code_and_one_line(command, kind, needs, argv, code, phrase, tmp_path):
    block = OPTIONAL if kind == "missing extra" else ()
    for mod in needs:
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"needs {mod}")
    res = vera(argv(Scratch(tmp_path)), tmp_path, block)
    out, err = res.stdout.decode("utf-8"), res.stderr.decode("utf-8")  # strict: the output is valid UTF-8
    assert "Traceback" not in out + err
    assert res.returncode == code, err
    if code == 0:
        assert err == "", err
        return
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), err
    assert lines[0].startswith(f"vera-ref {command}: "), lines[0]  # names the command
    assert "internal error" not in lines[0]
    assert phrase in lines[0], lines[0]
