"""spec 4: adapter files -- round trips, interop, hostile input, atomic writes, vectors."""
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, strategies as st

from conftest import ROOT, VECTORS
from vera_ref import container
from vera_ref.adapter import (base_fingerprint, load_adapter, new_adapter, save_adapter, validate_adapter)
from vera_ref.dtypes import round_to
from vera_ref.errors import AdapterFileError
from vera_ref.metadata import ModuleSpec, config_document, parse_config

DTYPES = ["float32", "float16", "bfloat16", "float64"]
FILES = json.loads((VECTORS / "files.json").read_text())


def _values(data, dtype, n):
    """n values of ``dtype`` from random bit patterns (subnormals, -0.0, extremes); non-finite ones -> 1.0."""
    bits = {"float16": 16, "bfloat16": 16, "float32": 32, "float64": 64}[dtype]
    raw = np.array(data.draw(st.lists(st.integers(0, 2**bits - 1), min_size=n, max_size=n)), dtype=np.uint64)
    if dtype == "bfloat16":
        vals = (raw.astype(np.uint32) << 16).view(np.float32)
    else:
        vals = raw.astype(f"u{bits // 8}").view(dtype)
    return np.where(np.isfinite(vals), vals, 1.0).astype(vals.dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_save_load_bit_exact(tmp_path_factory, dtype, data):
    r, out_f = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 6))
    ad = new_adapter([("m.a", 5, out_f), ("m.b", 3, 2, "conv1d")], r=r, seed=data.draw(st.integers(0, 2**64 - 1)),
                     vector_dtype=dtype)
    for name, shape in (("m.a", out_f), ("m.b", 2)):
        ad.lambda_b[name] = _values(data, dtype, shape)
        ad.lambda_d[name] = _values(data, dtype, r)
    path = tmp_path_factory.mktemp("rt") / "a.safetensors"
    save_adapter(ad, path)
    back = load_adapter(path)
    for name in ("m.a", "m.b"):
        for got, want in ((back.lambda_b[name], ad.lambda_b[name]), (back.lambda_d[name], ad.lambda_d[name])):
            assert got.dtype == want.dtype and np.array_equal(got.view(f"u{got.itemsize}"),
                                                              want.view(f"u{want.itemsize}"))
    assert back.config.seed == ad.config.seed and back.config.modules == ad.config.modules


def test_every_generator_and_sharing_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    stored = {1: (rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(5, 3)).astype(np.float32)),
              2: (rng.normal(size=(3, 6)).astype(np.float32), rng.normal(size=(2, 3)).astype(np.float32))}
    cases = [new_adapter([("a", 4, 5), ("b", 6, 2)], r=3, seed=11, sharing="per-module"),
             new_adapter([("a", 4, 5), ("b", 6, 2)], r=3, generator="stored", sharing="per-module", stored=stored),
             new_adapter([("a", 4, 5)], r=3, seed=2**40, generator="peft-mt19937")]
    for i, ad in enumerate(cases):
        save_adapter(ad, tmp_path / f"{i}.safetensors")
        back = load_adapter(tmp_path / f"{i}.safetensors")
        for g, _, _ in ad.config.groups():
            assert all(np.array_equal(p, q) for p, q in zip(back.projection(g), ad.projection(g)))
    # per-module group 2 is projection(seed, r, 6, 2, group=2)
    from vera_ref.projection import projection
    A2, B2 = projection(11, 3, 6, 2, group=2)
    assert np.array_equal(cases[0].module_projection("b")[0], A2)


def test_extra_tensors_and_fingerprint(tmp_path):
    mods = [ModuleSpec("l1", 4, 5), ModuleSpec("l2", 3, 5, "conv1d")]
    W = {"l1": np.arange(20.0).reshape(5, 4), "l2": np.arange(15.0).reshape(3, 5)}
    fp = base_fingerprint(W, mods)
    ad = new_adapter(mods, r=2, base_model={"name": "toy", "fingerprint": fp})
    ad.extra["head.weight"] = (np.ones((2, 5), np.float32), "bfloat16")
    save_adapter(ad, tmp_path / "a.safetensors")
    back = load_adapter(tmp_path / "a.safetensors")
    assert back.config.base_model["fingerprint"] == fp and back.extra["head.weight"][1] == "bfloat16"
    # conv1d weights are fingerprinted in (out, in) orientation: the same numbers as a linear (5, 3)
    fp_lin = base_fingerprint({"l1": W["l1"], "l2": W["l2"].T}, [mods[0], ModuleSpec("l2", 3, 5)])
    assert fp_lin == fp
    assert base_fingerprint({"l1": W["l1"] + 1, "l2": W["l2"]}, mods) != fp


def test_our_files_read_by_the_safetensors_package(tmp_path):
    """safetensors' NumPy reader reads our F64/F32/F16 files, and ours reads theirs, bit-exact
    (the bfloat16 cross-check needs torch and lives in tests/torch)."""
    st_numpy = pytest.importorskip("safetensors.numpy")
    for dtype in ("float64", "float32", "float16"):
        ad = new_adapter([("q", 4, 3)], r=2, vector_dtype=dtype)
        ad.lambda_b["q"] = round_to(np.array([1.5, -2.25, 3e-3]), dtype)
        save_adapter(ad, tmp_path / "a.safetensors")
        got = st_numpy.load_file(tmp_path / "a.safetensors")["q.lambda_b"]
        assert got.dtype == ad.lambda_b["q"].dtype and np.array_equal(got, ad.lambda_b["q"])
    t = {"x": np.array([1.0, -3.5, 1e-20], np.float64), "y": np.arange(6.0, dtype=np.float16).reshape(2, 3)}
    st_numpy.save_file(t, tmp_path / "t.safetensors", metadata={"k": "v"})
    meta, tensors = container.read(tmp_path / "t.safetensors")
    assert meta == {"k": "v"}
    assert np.array_equal(tensors["x"].data, t["x"])
    assert tensors["y"].dtype == "F16" and np.array_equal(tensors["y"].data, t["y"])


def test_hostile_header_allocates_nothing(tmp_path):
    """A document claiming a 10^12-element projection is refused with little memory used."""
    bad = next(t for g in FILES["testGroups"] for t in g["tests"] if "10^12" in t["comment"])
    path = VECTORS / "files" / bad["file"]
    tracemalloc.start()
    with pytest.raises(AdapterFileError) as err:
        load_adapter(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert str(err.value).startswith("projection: 1000000000000 elements exceed the limit of 268435456")
    assert peak < 2_000_000, peak
    # a header length of 2^40 and tensor offsets of 4 MB in a 200-byte file: refused before reading
    p = tmp_path / "h.safetensors"
    p.write_bytes((1 << 40).to_bytes(8, "little") + b"{}" * 8)
    tracemalloc.start()
    with pytest.raises(AdapterFileError, match=r"^header: length 1099511627776 exceeds the limit"):
        load_adapter(p)
    assert tracemalloc.get_traced_memory()[1] < 1_000_000
    tracemalloc.stop()


def test_packed_layout_round_trips_and_is_smaller(tmp_path):
    mods = [(f"roberta.encoder.layer.{i}.attention.self.{n}", 1024, 1024) for i in range(24) for n in ("query", "value")]
    sizes = {}
    for layout in ("per-module", "packed"):
        ad = new_adapter(mods, r=256, tensor_layout=layout)
        rng = np.random.default_rng(0)
        for m in ad.config.modules:
            ad.lambda_b[m.name] = rng.normal(size=1024).astype(np.float32)
        save_adapter(ad, tmp_path / f"{layout}.safetensors")
        sizes[layout] = (tmp_path / f"{layout}.safetensors").stat().st_size
        back = load_adapter(tmp_path / f"{layout}.safetensors")
        assert back.config.modules == ad.config.modules and back.config.tensor_layout == layout
        assert all(np.array_equal(back.lambda_b[m.name], ad.lambda_b[m.name]) for m in ad.config.modules)
    # RoBERTa-large query/value, r = 256, float32: 245,760 bytes of vectors
    assert sizes["packed"] <= 250_000 < sizes["per-module"]


def test_module_prefix_is_the_common_dotted_prefix():
    from vera_ref.metadata import common_prefix
    assert common_prefix(["a.b.c", "a.b.d"]) == "a.b."
    assert common_prefix(["a.b", "a.bc"]) == "a."
    assert common_prefix(["x"]) == ""
    assert common_prefix(["a.b.c", "a.b"]) == "a."


def test_the_limit_is_a_setting(tmp_path):
    ad = new_adapter([("q", 64, 64)], r=16)
    save_adapter(ad, tmp_path / "a.safetensors")
    with pytest.raises(AdapterFileError, match=r"^projection: 2048 elements exceed the limit of 1000 "):
        load_adapter(tmp_path / "a.safetensors", max_projection_elements=1000)
    assert load_adapter(tmp_path / "a.safetensors", max_projection_elements=2048).config.r == 16


@pytest.mark.parametrize("case", FILES["testGroups"][0]["tests"], ids=lambda c: c["file"])
def test_valid_file_vectors(case):
    ad = load_adapter(VECTORS / "files" / case["file"])
    assert config_document(ad.config) == case["effective"]
    meta, entries = container.read_metadata(VECTORS / "files" / case["file"])
    assert json.loads(meta["vera_config"]) == case["config"] and meta["vera_spec_version"] == case["specVersion"]
    assert {k: {"dtype": v[0], "shape": list(v[1])} for k, v in entries.items()} == \
        {k: {"dtype": v["dtype"], "shape": v["shape"]} for k, v in case["tensors"].items()}


@pytest.mark.parametrize("case", FILES["testGroups"][1]["tests"], ids=lambda c: c["file"])
def test_invalid_file_vectors_fail_with_their_exact_error(case):
    with pytest.raises(AdapterFileError) as err:
        validate_adapter(VECTORS / "files" / case["file"])
    assert (err.value.code, err.value.field, str(err.value)) == \
        (case["error"]["code"], case["error"]["field"], case["error"]["message"])


def test_invalid_vectors_cover_every_rule_a_file_can_break():
    from vera_ref.rules import CODES
    from vera_ref.vectors import UNREACHABLE_FROM_FILES
    got = [t["error"]["code"] for t in FILES["testGroups"][1]["tests"]]
    assert set(got) == set(CODES) - set(UNREACHABLE_FROM_FILES)
    multi = [t for t in FILES["testGroups"][1]["tests"] if t["comment"].startswith("multi-fault")]
    assert len(multi) >= 8 and len({t["error"]["code"] for t in multi}) >= 8
    comments = " ".join(t["comment"] for t in FILES["testGroups"][0]["tests"])
    assert "left out" in comments and "minor version 1.9" in comments and "aligned" in comments


def test_spec_table_lists_exactly_the_rules_of_the_reader():
    """spec 4.6.3: the table (code, field, problem) is the reader's list, in the same order."""
    from vera_ref.rules import RULES
    text = (ROOT / "spec" / "4-adapter-file.md").read_text()
    rows = re.findall(r"^\| (E4\.6\.[0-9]+\.[0-9]+) \| `([^`]*)` \| (?:`` (.*) ``|`(.*)`) \|$", text, re.M)
    table = [(c, f, p or q) for c, f, p, q in rows]
    assert table == [(c, f, p.replace("{{", "{").replace("}}", "}")) for c, f, p in RULES]


def test_metadata_schema_agrees_with_the_reader():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((ROOT / "spec" / "schema" / "adapter-config.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    for case in FILES["testGroups"][0]["tests"]:
        if case["specVersion"] in ("1.0", "1.1"):  # a newer minor may add fields the schema does not know
            jsonschema.validate(case["config"], schema)
    # document-level invalid vectors that a schema can express are rejected by the schema too
    schema_fields = {"r", "generator", "seed", "sharing", "dropout", "alpha", "modules[0]", "module_prefix",
                     "tensor_layout"}
    for case in FILES["testGroups"][1]["tests"]:
        # the range of a 20-digit seed (< 2^64) is beyond a regex; clause 4.6 checks it
        # JSON Schema counts 4.0 as an integer (its data model), spec 4.3 does not: those are 4.6's alone
        if (case["error"]["field"] in schema_fields and "out of range" not in case["comment"]
                and "not an integer literal" not in case["comment"]
                and case["error"]["code"].split(".")[2] in {str(n) for n in range(11, 22)}):
            meta, _ = container.read_metadata(VECTORS / "files" / case["file"])
            doc = json.loads(meta["vera_config"])
            assert not jsonschema.Draft202012Validator(schema).is_valid(doc), case["comment"]


def test_newer_minor_version_fields_are_skipped():
    ad = new_adapter([("q", 4, 4)], r=2)
    ad.config.projection_sha256 = ad.checksums()
    doc = config_document(ad.config)
    doc["future_field"] = 1
    text = json.dumps(doc)
    with pytest.raises(AdapterFileError, match="^future_field: unknown field$"):
        parse_config(text, "1.0")
    assert parse_config(text, "1.7").r == 2


def test_writer_refuses_what_a_reader_would_reject(tmp_path):
    ad = new_adapter([("q", 4, 4)], r=2)
    ad.lambda_b["q"][1] = np.inf
    with pytest.raises(AdapterFileError, match=r"^q.lambda_b: contains non-finite values"):
        save_adapter(ad, tmp_path / "a.safetensors")
    assert not list(tmp_path.iterdir())  # nothing written, no temporary left behind


def test_killed_writer_leaves_the_old_file_intact(tmp_path):
    """spec 4.7: SIGKILL in the middle of a save leaves the previous file loadable and unchanged."""
    path = tmp_path / "a.safetensors"
    save_adapter(new_adapter([("q", 8, 8)], r=2, seed=5), path)
    before = path.read_bytes()
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        import numpy as np
        from vera_ref import container
        from vera_ref.adapter import new_adapter, save_adapter
        real = container.write_atomic
        def slow(path, parts):
            class Slow(bytes): pass
            data = b"".join(parts)
            def chunks():
                for i in range(0, len(data), 1 << 20):
                    yield data[i:i + 1 << 20]
                    print("chunk", flush=True)
                    time.sleep(0.05)
            real(path, list(chunks()))
        container.write_atomic = slow
        ad = new_adapter([("q", 8, 8)], r=2, seed=6)
        ad.extra["big"] = (np.ones(8_000_000, np.float32), "float32")
        save_adapter(ad, {str(path)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    for _ in range(3):  # let it write a few chunks into the temporary file
        assert proc.stdout.readline().startswith("chunk")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert path.read_bytes() == before
    assert load_adapter(path).config.seed == 5


@pytest.mark.parametrize("chunk", [4, 12, 1 << 20])
def test_hashes_are_of_c_order_float32_bytes_in_any_layout(chunk, monkeypatch):
    """spec 2.6 / 4.3: sha256_hex and base_fingerprint hash float32 little-endian C-order bytes,
    a block of rows at a time; the blocks (4 and 12 bytes: one row, several rows with a
    remainder) never change the digest, nor does the array's layout or dtype."""
    import hashlib

    import vera_ref.adapter as adapter_mod
    monkeypatch.setattr(adapter_mod, "HASH_CHUNK_BYTES", chunk)
    W = np.arange(35, dtype=np.float64).reshape(7, 5) / 3  # float64: rounded to float32 before hashing
    want = hashlib.sha256(W.astype("<f4").tobytes()).hexdigest()
    assert adapter_mod.sha256_hex(W) == want
    assert adapter_mod.sha256_hex(np.asfortranarray(W.astype(np.float32))) == want
    assert adapter_mod.sha256_hex(W.T.T) == want
    assert adapter_mod.sha256_hex(W[0]) == hashlib.sha256(W[0].astype("<f4").tobytes()).hexdigest()
    fp = hashlib.sha256(b"m\0" + W.astype("<f4").tobytes()).hexdigest()
    assert base_fingerprint({"m": np.asfortranarray(W)}, [ModuleSpec("m", 5, 7)]) == fp


@pytest.mark.parametrize("shape", [(1024, 2048), (4, 300_000)])
def test_hashing_a_fortran_ordered_table_copies_one_block_of_rows_at_a_time(shape):
    """An 8 MiB Fortran-ordered B is hashed with about one 1 MiB block of rows in memory, never a
    whole row-major copy (the reader's memory bound, spec 4.1.1, relies on it); a row longer than
    the block (1.2 MB) is copied alone."""
    import hashlib

    import vera_ref.adapter as adapter_mod
    B = np.asfortranarray(np.arange(shape[0] * shape[1], dtype=np.float32).reshape(shape))
    tracemalloc.start()
    try:
        digest = adapter_mod.sha256_hex(B)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert digest == hashlib.sha256(np.ascontiguousarray(B).tobytes()).hexdigest()
    assert peak <= adapter_mod.HASH_CHUNK_BYTES + 256 * 1024, peak
