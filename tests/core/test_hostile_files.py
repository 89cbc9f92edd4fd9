"""spec 4.1.1, 4.6, 4.7: hostile files, the JSON dialect, paths that are not files, atomic writes."""
import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc

import numpy as np
import pytest

from conftest import ROOT
from vera_ref import atomic, container, jsontext
from vera_ref.adapter import build_adapter, load_adapter, new_adapter, save_adapter
from vera_ref.errors import AdapterFileError
from vera_ref.metadata import config_document, parse_config
from vera_ref.rules import CODES

_spec = importlib.util.spec_from_file_location("fuzz_reader", ROOT / "tools" / "fuzz_reader.py")
fuzz = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz)


def _code(fn, *args):
    with pytest.raises(AdapterFileError) as err:
        fn(*args)
    return err.value.code, err.value.field, str(err.value)


# --- the JSON dialect (spec 4.1.1) ---------------------------------------------------------

@pytest.mark.parametrize("text, rule", [
    ('{"a":1,"a":2}', "duplicate"),
    ('{"a":{"b":1,"b":1}}', "duplicate"),
    ('{"a":NaN}', "syntax"),
    ('{"a":-Infinity}', "syntax"),
    ('{"a":1,}', "syntax"),
    ("{'a':1}", "syntax"),
    ('{"a":1e400}', "number"),
    ('{"a":18446744073709551616}', "number"),
    ('{"a":-9223372036854775809}', "number"),
    ('{"a":' + "9" * 5000 + "}", "number"),
    ('{"a":0.' + "1" * 100 + "}", "number"),
    ('{"a":' + "[" * 64 + "]" * 64 + "}", "depth"),
    ("[" * 100_000 + "]" * 100_000, "depth"),
    ("[" * 100_000 + "]" * 99_999, "syntax"),
    ("[" * 70 + "]" * 70 + ",", "syntax"),  # syntax is checked before depth
    ('{"a":1e999,"a":1}', "number"),  # numbers before duplicates
    ("[" + "1," * 1_100_000 + "1]", "count"),
])
def test_dialect_rules(text, rule):
    with pytest.raises(jsontext.JsonRuleError) as err:
        jsontext.loads(text)
    assert err.value.rule == rule


def test_dialect_accepts_the_edges():
    assert jsontext.depth(jsontext.loads('{"a":' + "[" * 63 + "]" * 63 + "}")) == 64
    assert jsontext.loads('{"a":18446744073709551615,"b":-9223372036854775808}') == \
        {"a": 2**64 - 1, "b": -(2**63)}
    assert jsontext.loads(' \n{"a":"\\u0000"} ') == {"a": "\x00"}
    assert jsontext.depth(jsontext.loads("[" * 64 + "]" * 64)) == 64


def test_duplicate_key_last_wins_is_refused():
    ad = new_adapter([("q", 4, 4)], r=2)
    ad.config.projection_sha256 = ad.checksums()
    text = json.dumps(config_document(ad.config), sort_keys=True, separators=(",", ":"))
    assert _code(parse_config, text.replace('"r":2', '"r":999,"r":2')) == \
        ("E4.6.10.6", "vera_config", 'vera_config: duplicate key "r"')


def test_long_values_are_quoted_as_short_excerpts():
    ad = new_adapter([("q", 4, 4)], r=2)
    ad.config.projection_sha256 = ad.checksums()
    doc = config_document(ad.config)
    doc["generator"] = "x" * 100_000
    code, field, msg = _code(parse_config, json.dumps(doc))
    assert code == "E4.6.13.2" and len(msg) < 250 and msg.endswith("...")
    doc["generator"] = "philox4x32-10"
    doc["y" * 50_000] = 1
    code, field, msg = _code(parse_config, json.dumps(doc))
    assert code == "E4.6.11.1" and len(field) == 120 and field.endswith("...")


# --- paths (spec 4.6 step 0) -----------------------------------------------------------------

def test_paths_that_are_not_regular_files(tmp_path):
    fifo = tmp_path / "a.safetensors"
    os.mkfifo(fifo)
    t0 = time.perf_counter()
    assert _code(load_adapter, fifo)[:2] == ("E4.6.0.4", "path")  # refused at once, never blocks
    assert time.perf_counter() - t0 < 1.0
    assert _code(load_adapter, tmp_path / "missing.safetensors")[:2] == ("E4.6.0.1", "path")
    assert _code(load_adapter, tmp_path)[:2] == ("E4.6.0.3", "path")
    peft = tmp_path / "peft"
    peft.mkdir()
    (peft / "adapter_config.json").write_text("{}")
    assert _code(load_adapter, peft) == (
        "E4.6.0.2", "path", "path: is a directory holding a PEFT adapter (adapter_config.json): "
                            "use `vera-ref convert --from-peft`")
    assert _code(load_adapter, "/dev/null")[:2] == ("E4.6.0.4", "path")


# --- hostile sizes: bounded time and memory ---------------------------------------------------

@pytest.mark.parametrize("body, code", [
    (b'{"__metadata__":{},"x":' + b"[]," * 3_000_000 + b"[]}", "E4.6.4.2"),
    (b'{"__metadata__":{},"x":' + b"[" * 5_000 + b"]" * 5_000 + b"}", "E4.6.4.5"),
    (b'{"__metadata__":{},' + b",".join(b'"t%d":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}' % i
                                        for i in range(200_000)) + b"}", "E4.6.4.2"),
])
def test_hostile_headers_are_refused_with_little_memory(tmp_path, body, code):
    p = tmp_path / "h.safetensors"
    p.write_bytes(len(body).to_bytes(8, "little") + body)
    tracemalloc.start()
    assert _code(load_adapter, p)[0] == code
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2 * len(body) + 4_000_000, peak


def test_shape_sizes_do_not_overflow():
    meta = {"vera_format": "vera-adapter", "vera_spec_version": "1.1"}
    for shape in ([2**63, 2**63, 0], [0, 2**64 - 1], [2**32] * 16, [0] * 16, [0, 5]):
        body = json.dumps({"__metadata__": meta, "x": {"dtype": "F32", "shape": shape,
                                                       "data_offsets": [0, 0]}}).encode()
        blob = len(body).to_bytes(8, "little") + body
        # the data section is empty: itemsize (4) times the product of the non-zero dimensions
        # exceeds it for every shape, zero-size ones included (spec 4.1 Sizes)
        with pytest.raises(AdapterFileError) as exc:
            container.parse(blob)
        assert exc.value.code == "E4.6.6.6", (shape, exc.value.code)
    # a zero-size tensor over a data section that holds its itemsize passes the size rule
    body = json.dumps({"__metadata__": meta, "x": {"dtype": "F32", "shape": [0] * 16, "data_offsets": [0, 0]},
                       "y": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    _, tensors = container.parse(len(body).to_bytes(8, "little") + body + b"\0" * 4)
    assert tensors["x"].data.shape == (0,) * 16


# --- other kinds of file (spec 4.6 steps 2 and 8) ---------------------------------------------

def test_onnx_and_peft_files_are_named(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import helper, TensorProto
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, producer_name="pytorch"), tmp_path / "m.onnx")
    assert _code(load_adapter, tmp_path / "m.onnx") == (
        "E4.6.2.1", "file", "file: this is an ONNX model, not a VeRA adapter")


# --- the seeded mutation fuzz (spec 4.6: only AdapterFileError, with a rule code) --------------

def test_seeded_mutation_fuzz(tmp_path):
    """3,000 mutants: accepted ones round-trip through the writer; rejected ones carry a rule code;
    the oracles of tools/fuzz_reader.py hold."""
    stats = fuzz.run(3000, None, seed=20261130)
    assert stats["other"] == {} and stats["bad_code"] == 0, (stats["other"], stats["first_other"])
    assert stats["accepted"] > 50 and len(stats["codes"]) > 40
    # issue 23's oracles ran, and none failed: sparse huge files (no tensor byte before steps 0-24),
    # escape invariance, repeated-key order, surrogate pairs, the document alone
    ran = {k: stats[k] for k in ("sparse", "escaped", "orders", "surrogate_pairs", "documents")}
    assert min(ran.values()) >= 20, ran
    failed = {k: stats[k] for k in ("escape_mismatch", "order_mismatch", "surrogate_mismatch", "document_mismatch",
                                    "not_unicode")}
    assert not any(failed.values()), (failed, stats["first_mismatch"])
    rng = __import__("random").Random(5)
    pool, checked = fuzz.seeds(), 0
    while checked < 40:
        kind, ad = fuzz.outcome(fuzz.mutate(rng, rng.choice(pool)))
        if kind != "accepted":
            continue
        save_adapter(ad, tmp_path / "rt.safetensors")
        back = load_adapter(tmp_path / "rt.safetensors")
        assert config_document(back.config) == config_document(ad.config)
        for m in ad.config.modules:
            assert np.array_equal(back.lambda_d[m.name], ad.lambda_d[m.name])
            assert np.array_equal(back.lambda_b[m.name], ad.lambda_b[m.name])
        checked += 1
    assert set(stats["codes"]) <= set(CODES)


# --- atomic writes (spec 4.7) -----------------------------------------------------------------

def _temps(folder):
    return [n for n in os.listdir(folder) if atomic.is_temporary(n) or n.endswith(".tmp")]


def test_atomic_write_removes_its_temporary_on_error(tmp_path, monkeypatch):
    p = tmp_path / "a.bin"
    atomic.atomic_write_bytes(p, b"old")
    for anonymous in (True, False):
        monkeypatch.setattr(atomic, "USE_O_TMPFILE", anonymous)
        old = p.read_bytes()
        with pytest.raises(KeyError):
            with atomic.atomic_file(p) as f:
                f.write(b"partial")
                raise KeyError("boom")
        assert p.read_bytes() == old and _temps(tmp_path) == []
        atomic.atomic_write(p, lambda f: f.write(b"new" + bytes([anonymous])))
        assert p.read_bytes() == b"new" + bytes([anonymous]) and _temps(tmp_path) == []
    assert oct(p.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


def test_stale_temporaries_are_swept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = tmp_path / f".a.bin{atomic.TEMP_MARK}{dead}-0123456789abcdef"
    live = tmp_path / f".a.bin{atomic.TEMP_MARK}{os.getpid()}-fedcba9876543210"
    other = tmp_path / f".b.bin{atomic.TEMP_MARK}{dead}-0123456789abcdef"
    for t in (stale, live, other):
        t.write_bytes(b"partial")
    atomic.atomic_write_bytes(tmp_path / "a.bin", b"x")
    assert not stale.exists() and live.exists() and other.exists()  # only a's, only dead writers'
    assert atomic.sweep(tmp_path) == [other.name]


KILLER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from vera_ref import atomic
    from vera_ref.adapter import new_adapter, save_adapter
    atomic.USE_O_TMPFILE = sys.argv[2] == "1"
    real = atomic.atomic_file
    class Slow:
        def __init__(self, f): self.f = f
        def write(self, b):
            for i in range(0, len(b), 1 << 18):
                self.f.write(b[i:i + (1 << 18)])
                time.sleep(0.002)
    def slow_file(path):
        import contextlib
        @contextlib.contextmanager
        def cm():
            with real(path) as f:
                yield Slow(f)
        return cm()
    atomic.atomic_file = slow_file
    ad = new_adapter([("q", 8, 8)], r=2, seed=6)
    ad.extra["big"] = (np.ones(2_000_000, np.float32), "float32")
    print("go", flush=True)
    while True:
        save_adapter(ad, sys.argv[1])
""")


@pytest.mark.parametrize("anonymous", [True, False])
def test_killed_writers_leave_the_old_file_and_no_temporaries(tmp_path, anonymous):
    """spec 4.7: 10 SIGKILLs at random moments of save_adapter (per temporary kind; 100 in
    tools/kill_writer.py): the target is always a whole file, and no temporary outlives the next write."""
    import random
    rng = random.Random(1)
    path = tmp_path / "a.safetensors"
    save_adapter(new_adapter([("q", 8, 8)], r=2, seed=5), path)
    for _ in range(10):
        proc = subprocess.Popen([sys.executable, "-c", KILLER, str(path), "1" if anonymous else "0"],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline() == "go\n"
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert load_adapter(path).config.r == 2  # the old file or a whole new one
        # anonymous: a kill between linkat and the rename can still leave one named temporary;
        # named: the temporary of the killed write stays; either is swept by the next write
        assert len(_temps(tmp_path)) <= 1
    save_adapter(new_adapter([("q", 8, 8)], r=2, seed=5), path)
    assert _temps(tmp_path) == [] and load_adapter(path).config.seed == 5


def test_concurrent_writers_leave_one_whole_file(tmp_path):
    """12 processes write different adapters to one path at once: no crash, one whole file."""
    path = tmp_path / "a.safetensors"
    script = ("import sys\nfrom vera_ref.adapter import new_adapter, save_adapter\n"
              "save_adapter(new_adapter([('q', 64, 64)], r=8, seed=int(sys.argv[2])), sys.argv[1])\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(path), str(i)], stderr=subprocess.PIPE)
             for i in range(12)]
    assert [p.wait() for p in procs] == [0] * 12, [p.stderr.read() for p in procs]
    assert load_adapter(path).config.seed in range(12) and _temps(tmp_path) == []
