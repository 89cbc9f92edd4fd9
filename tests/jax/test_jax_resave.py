"""vera_jax.nnx.save_adapter writes back everything a loaded file carried (spec 4.3-4.5): the module
order, tensor layout, d_initial, dropout, provenance, base_model, extra tensors in their dtypes, the
stored projections; and each can be set. The expected bytes are vera_ref's writer's (an independent
implementation of spec 4.3's canonical form)."""
import json

import numpy as np
import pytest

jax = pytest.importorskip("jax")
nnx = pytest.importorskip("flax.nnx")
import jax.numpy as jnp  # noqa: E402

import vera_ref  # noqa: E402
from conftest import VECTORS  # noqa: E402
from vera_jax.nnx import apply_vera, load_adapter, save_adapter, to_adapter, vera_layers  # noqa: E402
from vera_ref.dtypes import round_to  # noqa: E402

PROVENANCE = {"trainer": "caf\u00e9 \u2713 \U0001F600", "\uffff": [1.5, None, True, {"z": 0}], "lr": 0.003,
              "steps": 250}


class Model(nnx.Module):
    """Attributes whose graph order (sorted: a_fc, b_fc, head) is not the file's order (b_fc, a_fc)."""

    def __init__(self, head_dtype=jnp.float64):  # float64: with x64 on
        rngs = nnx.Rngs(0)
        self.a_fc = nnx.Linear(6, 4, rngs=rngs)
        self.b_fc = nnx.Linear(3, 5, rngs=rngs)
        self.head = nnx.Linear(4, 2, dtype=head_dtype, param_dtype=head_dtype, rngs=rngs)


def mods():
    return [vera_ref.ModuleSpec("b_fc", 3, 5), vera_ref.ModuleSpec("a_fc", 6, 4)]


def full_file(path, model, *, fingerprint_of=None):
    """A file with every field away from its default, written by vera_ref: per-module groups in a
    non-graph order, packed, bfloat16 vectors, d_initial, dropout, provenance, base_model (name,
    revision, the fingerprint of ``fingerprint_of``'s kernels), a float64 head weight and float16 bias."""
    src = fingerprint_of or model
    w0 = {m.name: np.asarray(getattr(src, m.name).kernel[...], np.float32).T for m in mods()}  # W0 (out, in)
    ad = vera_ref.new_adapter(mods(), r=3, seed=11, sharing="per-module", d_initial=0.001, dropout=0.05,
                              vector_dtype="bfloat16", tensor_layout="packed", provenance=PROVENANCE,
                              base_model={"name": "gpt2", "revision": "e7da7f2",
                                          "fingerprint": vera_ref.base_fingerprint(w0, mods())})
    rng = np.random.default_rng(5)
    for n in ad.lambda_d:
        ad.lambda_d[n] = round_to(rng.normal(size=ad.lambda_d[n].shape), "bfloat16")
        ad.lambda_b[n] = round_to(rng.normal(size=ad.lambda_b[n].shape), "bfloat16")
    ad.extra["head.weight"] = (rng.normal(size=(2, 4)) / 3, "float64")  # not a float32 value
    ad.extra["head.bias"] = (rng.normal(size=2).astype(np.float16).astype(np.float32), "float16")
    vera_ref.save_adapter(ad, path)
    return ad


def test_a_loaded_file_is_written_back_byte_for_byte(tmp_path):
    with jax.enable_x64(True):  # the float64 head holds its weight exactly
        m = Model()
        full_file(tmp_path / "in.safetensors", m)
        load_adapter(m, tmp_path / "in.safetensors", rngs=nnx.Rngs(dropout=0))  # fingerprint checked
        save_adapter(m, tmp_path / "out.safetensors")
        assert (tmp_path / "out.safetensors").read_bytes() == (tmp_path / "in.safetensors").read_bytes()
        ad = to_adapter(m)
    assert [x.name for x in ad.config.modules] == ["b_fc", "a_fc"]  # the file's order, not the graph's
    assert ad.config.tensor_layout == "packed" and ad.config.provenance == PROVENANCE
    assert (ad.config.d_initial, ad.config.dropout) == (0.001, 0.05)
    assert {k: d for k, (_, d) in ad.extra.items()} == {"head.weight": "float64", "head.bias": "float16"}


def test_a_stored_projection_file_is_written_back_byte_for_byte(tmp_path):
    src = VECTORS / "files" / "valid-04.safetensors"  # stored A and B (spec 2.5.2), float64 vectors
    ref = vera_ref.load_adapter(src)
    m = ref.config.modules[0]

    class One(nnx.Module):
        def __init__(self):
            setattr(self, m.name, nnx.Linear(m.in_features, m.out_features, rngs=nnx.Rngs(0)))
    with jax.enable_x64(True):
        model = One()
        load_adapter(model, src, check_fingerprint=False)
        save_adapter(model, tmp_path / "s.safetensors", fingerprint=False)
    want = tmp_path / "ref.safetensors"
    vera_ref.save_adapter(ref, want)  # what the reference writes for the same content
    assert (tmp_path / "s.safetensors").read_bytes() == want.read_bytes()


def test_trained_values_are_written_in_the_files_dtypes(tmp_path):
    with jax.enable_x64(True):
        m = Model()
        m.head = nnx.Linear(4, 2, rngs=nnx.Rngs(0))  # a float32 head: the file's float64/float16 dtypes still rule
        full_file(tmp_path / "in.safetensors", m)
        load_adapter(m, tmp_path / "in.safetensors", rngs=nnx.Rngs(dropout=0))
        m.head.bias[...] = jnp.full((2,), 1 / 3, jnp.float32)  # "trained"
        layer = dict(vera_layers(m))["a_fc"]
        layer.lambda_b[...] = jnp.full((4,), 1 / 3, jnp.float32)
        save_adapter(m, tmp_path / "out.safetensors")
        held, _ = to_adapter(m).extra["head.bias"]  # in memory too: held as the Adapter holds float16 values
    assert held.dtype == np.float16 and np.array_equal(held, np.full(2, np.float16(np.float32(1 / 3))))
    back = vera_ref.load_adapter(tmp_path / "out.safetensors")
    bias, dt = back.extra["head.bias"]
    assert dt == "float16" and np.array_equal(bias, np.full(2, np.float16(np.float32(1 / 3))))
    assert back.extra["head.weight"][1] == "float64"
    assert np.array_equal(back.lambda_b["a_fc"], round_to(np.full(4, np.float32(1 / 3)), "bfloat16"))


def test_every_kept_field_can_be_set(tmp_path):
    with jax.enable_x64(True):
        m = Model()
        full_file(tmp_path / "in.safetensors", m, fingerprint_of=Model())
        other = Model()
        for n in ("a_fc", "b_fc"):  # base kernels other than those the file was fingerprinted on
            getattr(m, n).kernel[...] = getattr(other, n).kernel[...] + 1
        w0 = {n: np.asarray(getattr(m, n).kernel[...], np.float32).T for n in ("a_fc", "b_fc")}
        load_adapter(m, tmp_path / "in.safetensors", check_fingerprint=False, rngs=nnx.Rngs(dropout=0))
        loaded = vera_ref.load_adapter(tmp_path / "in.safetensors").config.base_model
        mine = vera_ref.base_fingerprint(w0, to_adapter(m).config.modules)
        assert mine != loaded["fingerprint"]
        assert to_adapter(m).config.base_model == loaded  # the trained-on weights' fingerprint, kept (spec 4.3)
        assert to_adapter(m, fingerprint=False).config.base_model == loaded
        assert to_adapter(m, base_model={"name": "y"}).config.base_model == {"name": "y", "fingerprint": mine}
        given = to_adapter(m, base_model={"name": "x", "fingerprint": "ab" * 32})
        assert given.config.base_model == {"name": "x", "fingerprint": "ab" * 32}  # as given (vera_torch's rule)
        assert to_adapter(m, base_model={}, fingerprint=False).config.base_model is None
        assert to_adapter(m, fingerprint=False, base_model_name="gpt2-xl").config.base_model == {
            **loaded, "name": "gpt2-xl"}
        ad = to_adapter(m, packed=False, provenance={"run": 2}, modules_to_save=[])
        assert ad.config.tensor_layout == "per-module" and ad.config.provenance == {"run": 2} and not ad.extra
        save_adapter(m, tmp_path / "out.safetensors", packed=False, provenance={"run": 2})
    meta = vera_ref.validate_adapter(tmp_path / "out.safetensors").config
    assert meta.tensor_layout == "per-module" and meta.provenance == {"run": 2}
    assert json.dumps(meta.provenance) == '{"run": 2}'


def test_an_applied_adapter_writes_the_spec_defaults(tmp_path):
    m = Model(jnp.float32)
    apply_vera(m, ["a_fc", "b_fc"], r=2, seed=1)
    ad = to_adapter(m, fingerprint=False)
    assert [x.name for x in ad.config.modules] == ["a_fc", "b_fc"]  # graph order
    assert ad.config.tensor_layout == "per-module" and ad.config.provenance == {} and not ad.extra
    assert ad.config.base_model is None
