"""Sharper tests for the adapter file (spec 2.4, 2.6, 4.1-4.6), written to kill surviving
mutants of vera_ref/container.py, metadata.py and adapter.py (tools/mutate.py, issue 15).

Expected values: projection groups and checksums from spec 2.4/2.6 with hashlib over
``vera_ref.projection``, byte layouts written by hand, codes from spec 4.6's table.
"""
import hashlib
import struct

import numpy as np
import pytest

import vera_ref
from vera_ref import AdapterFileError, ModuleSpec, new_adapter, save_adapter
from vera_ref.container import looks_like_onnx
from vera_ref.metadata import AdapterConfig, check_version, parse_config


def code_of(fn):
    with pytest.raises(AdapterFileError) as e:
        fn()
    return e.value.code


def sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, dtype="<f4").tobytes()).hexdigest()


# -- spec 2.4: groups are 0 (shared) or 1..M (per-module) ------------------------------------------

def test_projection_groups_and_checksums_per_sharing(tmp_path):
    mods = [ModuleSpec("a.q", 6, 5), ModuleSpec("a.v", 4, 7)]
    for sharing, want in [("shared", [(0, 6, 7)]), ("per-module", [(1, 6, 5), (2, 4, 7)])]:
        ad = new_adapter(mods, 3, seed=11, sharing=sharing)
        assert ad.config.groups() == want
        assert [ad.config.group_of(i) for i in range(2)] == ([0, 0] if sharing == "shared" else [1, 2])
        path = tmp_path / f"{sharing}.safetensors"
        save_adapter(ad, path)
        back = vera_ref.load_adapter(path)
        for entry, (g, n_in, n_out) in zip(back.config.projection_sha256, want):
            A, B = vera_ref.projection(11, 3, n_in, n_out, g)
            assert (entry["group"], entry["A"], entry["B"]) == (g, sha(A), sha(B))
    assert AdapterConfig(r=2, modules=mods, sharing="per-module").projection_elements() == 2 * (6 + 5 + 4 + 7)


def test_adapter_config_defaults():
    """spec 4.3's defaults for fields a document leaves out."""
    c = AdapterConfig(r=2, modules=[ModuleSpec("m", 3, 4), ModuleSpec("n", 5, 2)])
    assert (c.generator, c.seed, c.sharing, c.tensor_layout, c.vector_dtype) == \
        ("philox4x32-10", 0, "shared", "per-module", "float32")
    assert (c.d_initial, c.dropout, c.n_in, c.n_out) == (0.1, 0.0, 5, 4)
    assert AdapterConfig(r=2, modules=[]).n_in == 0
    given = AdapterConfig(r=2, modules=[ModuleSpec("m", 3, 4)], n_in=9, n_out=8)
    assert (given.n_in, given.n_out) == (9, 8)


def test_documents_leaving_fields_out_get_the_defaults():
    import json
    from vera_ref.metadata import config_json
    ad = new_adapter([ModuleSpec("m", 3, 4)], 2, seed=3, d_initial=0.5, dropout=0.25)
    doc = json.loads(config_json(ad.config))
    assert (doc["d_initial"], doc["dropout"]) == (0.5, 0.25)
    del doc["d_initial"], doc["dropout"]
    c = parse_config(json.dumps(doc))
    assert (c.d_initial, c.dropout, c.seed) == (0.1, 0.0, 3)


def test_documents_are_counted_unless_said_otherwise():
    """spec 4.6 step 10 (E4.6.10.2): more than 2^20 structural characters; parse_config counts by default."""
    text = '{"r": [' + "0," * (1 << 20) + "0]}"
    assert code_of(lambda: parse_config(text)) == "E4.6.10.2"


@pytest.mark.parametrize("version,want", [("1.0", (1, 0)), ("1.17", (1, 17)), ("1.123456789", (1, 123456789))])
def test_check_version_returns_major_and_minor(version, want):
    assert check_version(version) == want


# -- spec 4.6 steps 1-3: the first bytes ---------------------------------------------------------------

def test_onnx_recognition():
    for tag in (0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42):  # ModelProto fields 2-8
        assert looks_like_onnx(bytes([0x08, 0x07, tag]))
        assert looks_like_onnx(bytes([0x08, 0x01, tag, 0, 0]))
        assert looks_like_onnx(bytes([0x08, 0x7F, tag]))
        assert not looks_like_onnx(bytes([0x08, 0x07, tag + 1]))
    assert not looks_like_onnx(bytes([0x08, 0x00, 0x12]))
    assert not looks_like_onnx(bytes([0x08, 0x80, 0x12]))
    assert not looks_like_onnx(bytes([0x09, 0x07, 0x12]))
    assert not looks_like_onnx(bytes([0x08, 0x07]))


def test_sizes_around_the_length_prefix(tmp_path):
    p = tmp_path / "f.safetensors"
    p.write_bytes(b"\0" * 7)
    assert code_of(lambda: vera_ref.load_adapter(p)) == "E4.6.1.1"
    p.write_bytes(b"\0" * 8)  # a complete length prefix announcing an empty header
    assert code_of(lambda: vera_ref.load_adapter(p)) == "E4.6.4.1"


def test_header_length_limits(tmp_path):
    p = tmp_path / "f.safetensors"
    p.write_bytes(struct.pack("<Q", 100_000_000) + b"{}")  # at the limit: only too long for the file
    assert code_of(lambda: vera_ref.load_adapter(p)) == "E4.6.3.1"
    p.write_bytes(struct.pack("<Q", 100_000_001) + b"{}")
    assert code_of(lambda: vera_ref.load_adapter(p)) == "E4.6.2.3"


def test_an_onnx_file_slightly_shorter_than_its_fake_length_is_named_onnx(tmp_path):
    """Bytes 08 07 12 read as a length are 0x120708; a file of that many bytes plus 4 is an ONNX model."""
    prefix = bytes([0x08, 0x07, 0x12, 0, 0, 0, 0, 0])
    n = int.from_bytes(prefix, "little")
    p = tmp_path / "model.onnx"
    p.write_bytes(prefix + b"\0" * (n - 4))
    assert code_of(lambda: vera_ref.load_adapter(p)) == "E4.6.2.1"


def test_a_header_longer_than_one_read_chunk(tmp_path):
    """A valid file whose header exceeds 1 MiB (a long provenance note) reads back exactly."""
    ad = new_adapter([ModuleSpec("m", 3, 4)], 2, seed=1, provenance={"notes": "x" * (1_300_000)})
    ad.lambda_b["m"][:] = [1, 2, 3, 4]
    p = tmp_path / "big.safetensors"
    save_adapter(ad, p)
    back = vera_ref.load_adapter(p)
    assert back.config.provenance == {"notes": "x" * 1_300_000}
    assert back.lambda_b["m"].tolist() == [1, 2, 3, 4]


# -- new_adapter checks, PEFT files ------------------------------------------------------------------

@pytest.mark.parametrize("field,value,code", [("d_initial", True, "E4.6.19.1"), ("d_initial", float("nan"), "E4.6.19.1"),
                                              ("d_initial", "0.1", "E4.6.19.1"), ("dropout", float("inf"), "E4.6.19.2"),
                                              ("dropout", False, "E4.6.19.2")])
def test_new_adapter_checks_numbers(field, value, code):
    assert code_of(lambda: new_adapter([ModuleSpec("m", 3, 4)], 2, **{field: value})) == code


@pytest.mark.parametrize("name", ["base_model.model.layer.q.vera_lambda_d", "layer.q.vera_lambda_b",
                                  "base_model.model.q.lora_A"])
def test_a_peft_checkpoint_is_named(tmp_path, name):
    header = ('{"__metadata__": {"format": "pt"}, "' + name + '": {"dtype": "F32", "shape": [2], '
              '"data_offsets": [0, 8]}}').encode()
    p = tmp_path / "adapter_model.safetensors"
    p.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    assert code_of(lambda: vera_ref.load_adapter(p)) == "E4.6.8.1"


def test_a_file_without_the_magic_and_not_peft(tmp_path):
    header = b'{"__metadata__": {"format": "pt"}, "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}'
    p = tmp_path / "other.safetensors"
    p.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    assert code_of(lambda: vera_ref.load_adapter(p)) == "E4.6.8.2"


# -- more of spec 4: layouts, versions, messages, paths ------------------------------------------------

def test_packed_stored_per_module_round_trip(tmp_path):
    mods = [ModuleSpec("a.q", 6, 5), ModuleSpec("a.v", 4, 7)]
    stored = {1: vera_ref.projection(2, 3, 6, 5, 9), 2: vera_ref.projection(3, 3, 4, 7, 9)}
    ad = new_adapter(mods, 3, seed=None, generator="stored", sharing="per-module", tensor_layout="packed",
                     stored=stored)
    ad.lambda_d["a.v"][:] = [1, 2, 3]
    ad.lambda_b["a.q"][:] = np.arange(5)
    p = tmp_path / "packed.safetensors"
    save_adapter(ad, p)
    back = vera_ref.load_adapter(p)
    assert back.config.tensor_layout == "packed"
    assert back.lambda_d["a.v"].tolist() == [1, 2, 3] and back.lambda_b["a.q"].tolist() == [0, 1, 2, 3, 4]
    for g in (1, 2):
        assert np.array_equal(back.stored[g][0], stored[g][0]) and np.array_equal(back.stored[g][1], stored[g][1])


def _doc_with(extra: dict) -> str:
    import json
    from vera_ref.metadata import config_json
    doc = json.loads(config_json(new_adapter([ModuleSpec("m", 3, 4)], 2, seed=3).config))
    doc.update(extra)
    return json.dumps(doc)


def test_unknown_fields_by_minor_version():
    """spec 4.8: a file of a newer minor may carry fields we do not know (skipped); ours may not."""
    from vera_ref.metadata import SPEC_VERSION
    major, minor = (int(v) for v in SPEC_VERSION.split("."))
    text = _doc_with({"zz_future": 1})
    assert parse_config(text, f"{major}.{minor + 1}").r == 2
    assert code_of(lambda: parse_config(text, SPEC_VERSION)) == "E4.6.11.1"
    assert code_of(lambda: parse_config(text, f"{major + 1}.0")) == "E4.6.9.2"


def test_excerpts_are_cut_at_the_limit():
    from vera_ref.rules import EXCERPT, excerpt
    assert excerpt(list(range(5))) == "[0, 1, 2, 3, 4]"
    long = excerpt(list(range(1000)))
    assert len(long) == EXCERPT and long.endswith("...") and long.startswith("[0, 1, 2, 3")
    assert excerpt("x" * EXCERPT, limit=EXCERPT + 2) == '"' + "x" * EXCERPT + '"'  # an exact fit is not cut
    assert excerpt("x" * EXCERPT, limit=EXCERPT + 1) == '"' + "x" * (EXCERPT - 3) + "..."
    assert excerpt(list(range(30)), limit=20) == "[0, 1, 2, 3, 4, 5..."

    class Odd:
        def __repr__(self):
            return "<odd " + "y" * 200 + ">"

    assert excerpt(Odd()) == ("<odd " + "y" * 200)[: EXCERPT - 3] + "..."


def test_generate_projection_refuses_stored():
    from vera_ref.adapter import generate_projection
    ad = new_adapter([ModuleSpec("m", 3, 4)], 2, seed=None, generator="stored",
                     stored={0: vera_ref.projection(0, 2, 3, 4)})
    with pytest.raises(AdapterFileError, match=r"^generator: the stored generator has no rule to generate from$"):
        generate_projection(ad.config, 0, 3, 4)


def test_new_adapter_checks_the_document_and_rounds_bfloat16():
    with pytest.raises(AdapterFileError):
        new_adapter([ModuleSpec("m", 3, 4), ModuleSpec("m", 3, 4)], 2)  # one name twice
    ad = new_adapter([ModuleSpec("m", 3, 4)], 2, vector_dtype="bfloat16", d_initial=0.1)
    assert ad.lambda_d["m"].dtype == np.float32 and ad.lambda_d["m"].tolist() == [0.10009765625] * 2


def test_paths_that_are_not_files(tmp_path):
    assert code_of(lambda: vera_ref.load_adapter(tmp_path / "missing.safetensors")) == "E4.6.0.1"
    assert code_of(lambda: vera_ref.load_adapter(tmp_path)) == "E4.6.0.3"
    (tmp_path / "adapter_config.json").write_text("{}")
    assert code_of(lambda: vera_ref.load_adapter(tmp_path)) == "E4.6.0.2"
    if __import__("os").path.exists("/dev/null"):
        assert code_of(lambda: vera_ref.load_adapter("/dev/null")) == "E4.6.0.4"


def test_a_file_that_shrinks_while_its_header_is_read():
    import io
    from vera_ref.container import read_header
    header = b'{"__metadata__": {}}'
    data = struct.pack("<Q", len(header)) + header
    f = io.BytesIO(data[:-5])  # the file lost its last 5 bytes after its size was taken
    with pytest.raises(AdapterFileError) as e:
        read_header(f, len(data))
    assert e.value.code == "E4.6.3.1"
    assert f"{8 + len(header) - 5}" in str(e.value)  # the size it found


def test_container_write_and_read_back(tmp_path):
    from vera_ref import container
    p = tmp_path / "plain.safetensors"
    container.write(p, {"k": "v"}, {"t": (np.arange(6, dtype=np.float32).reshape(2, 3), "F32"),
                                    "h": (np.array([1.5, -2.0]), "BF16")})
    meta, tensors = container.read(p)
    assert meta == {"k": "v"}
    assert tensors["t"].dtype == "F32" and tensors["t"].data.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert tensors["h"].dtype == "BF16" and tensors["h"].data.tolist() == [1.5, -2.0]


def test_paths_the_system_cannot_stat_or_open(tmp_path):
    import os
    f = tmp_path / "f.safetensors"
    f.write_bytes(b"\0" * 16)
    with pytest.raises(AdapterFileError) as e:
        vera_ref.load_adapter(f / "inside")  # a file used as a folder: stat fails with ENOTDIR
    assert e.value.code == "E4.6.0.5" and "Not a directory" in str(e.value)
    if os.geteuid() != 0:  # root reads anything
        f.chmod(0)
        try:
            assert code_of(lambda: vera_ref.load_adapter(f)) == "E4.6.0.5"
        finally:
            f.chmod(0o600)


def test_d_initial_is_any_finite_number_and_parse_document_counts():
    from vera_ref.metadata import parse_document
    assert new_adapter([ModuleSpec("m", 3, 4)], 2, d_initial=2.5).config.d_initial == 2.5
    assert new_adapter([ModuleSpec("m", 3, 4)], 2, d_initial=-3).config.d_initial == -3.0
    text = '{"r": [' + "0," * (1 << 20) + "0]}"
    assert code_of(lambda: parse_document(text)) == "E4.6.10.2"


def test_header_structural_count_boundary(tmp_path):
    """E4.6.4.2 fires above 2^20 structural characters, not at 2^20."""
    from vera_ref import jsontext

    def header(k):
        return '{"a":[' + "0," * k + "0]}"

    base = jsontext.structural_count(header(0))
    at = header(jsontext.MAX_STRUCTURAL - base)
    assert jsontext.structural_count(at) == jsontext.MAX_STRUCTURAL
    p = tmp_path / "h.safetensors"
    for text, refused in ((at, False), (header(jsontext.MAX_STRUCTURAL - base + 1), True)):
        raw = text.encode()
        p.write_bytes(struct.pack("<Q", len(raw)) + raw)
        got = code_of(lambda: vera_ref.load_adapter(p))
        assert (got == "E4.6.4.2") == refused, got
