"""Values on every way in and out of vera_jax (issue 23, findings 6 and 7): in-memory Adapters and dtype
conversions get the checks of a file (vera_ref.values, spec 4.6 rule 25), a merge never writes a
non-finite kernel (spec 3.6 MUST) and forms Delta W in binary32 or wider (spec 3.6 SHOULD)."""
import numpy as np
import pytest

jax = pytest.importorskip("jax")
nnx = pytest.importorskip("flax.nnx")
import jax.numpy as jnp  # noqa: E402

import vera_jax  # noqa: E402
import vera_ref  # noqa: E402
from vera_jax.nnx import VeraLinear, apply_vera, load_adapter, merge_and_unload, to_adapter, vera_layers  # noqa: E402
from vera_ref import AdapterFileError, ModuleSpec  # noqa: E402
from vera_ref.values import checked_values  # noqa: E402


class Two(nnx.Module):
    def __init__(self, dtype=jnp.float32):
        rngs = nnx.Rngs(0)
        self.fc1 = nnx.Linear(64, 64, rngs=rngs, param_dtype=dtype, dtype=dtype)
        self.fc2 = nnx.Linear(64, 32, rngs=rngs, param_dtype=dtype, dtype=dtype)

    def __call__(self, x):
        return self.fc2(self.fc1(x))


def kernels(model):
    return {n: np.asarray(m.kernel[...]).copy() for n, m in nnx.iter_modules(model) if isinstance(m, nnx.Linear)}


# -- finding 6: merge --------------------------------------------------------------------------------------

def test_merge_refuses_a_float16_kernel_that_would_overflow_and_changes_nothing():
    model = Two(jnp.float16)
    apply_vera(model, ["fc1", "fc2"], r=16, seed=3)
    for _, layer in vera_layers(model):  # lambdas 300: |Delta W| reaches past float16's 65504 on some values
        layer.lambda_d[...] = jnp.full(layer.lambda_d[...].shape, 300.0)
        layer.lambda_b[...] = jnp.full(layer.lambda_b[...].shape, 300.0)
    before = kernels(model)
    k = vera_layers(model)[0][1].delta_merged_kernel()
    assert not bool(jnp.isfinite(k).all())  # the case does overflow
    with pytest.raises(vera_jax.MergeError, match=r"^fc1: merging would make \d+ of the 4096 values of the "
                       r"\(64, 64\) float16 kernel non-finite; the weights are unchanged$"):
        merge_and_unload(model)
    assert all(isinstance(getattr(model, n), VeraLinear) for n in ("fc1", "fc2"))  # nothing unloaded
    after = kernels(model)
    assert after.keys() == before.keys() and all(np.array_equal(after[n], before[n]) for n in before)


def test_merge_refusal_is_all_or_nothing_across_layers():
    model = Two(jnp.float16)
    apply_vera(model, ["fc1", "fc2"], r=16, seed=3)
    layers = dict(vera_layers(model))
    layers["fc1"].lambda_b[...] = jnp.full((64,), 0.5)  # fc1 merges fine
    layers["fc2"].lambda_d[...] = jnp.full((16,), 300.0)
    layers["fc2"].lambda_b[...] = jnp.full((32,), 300.0)  # fc2 (after fc1 in graph order) overflows
    before = kernels(model)
    with pytest.raises(vera_jax.MergeError, match="^fc2: "):
        merge_and_unload(model)
    after = kernels(model)
    assert all(np.array_equal(after[n], before[n]) for n in before)  # fc1 not written either


def test_merge_forms_delta_w_in_float32_for_a_float16_kernel():
    # Delta W = 100 * 700 = 70000 overflows float16 alone; W0 + Delta W = 10000 does not (spec 3.6 SHOULD)
    A, B = jnp.ones((1, 4), jnp.float32), jnp.ones((3, 1), jnp.float32)  # (r, n_in), (n_out, r)
    W = jnp.full((3, 4), -60000.0, jnp.float16)  # (out, in), exact in float16
    ld, lb = jnp.asarray([700.0]), jnp.full((3,), 100.0)
    merged = vera_jax.merge(W, A, B, ld, lb)
    assert merged.dtype == jnp.float16
    assert np.array_equal(np.asarray(merged, np.float64), np.full((3, 4), 10000.0))
    back = vera_jax.unmerge(merged, A, B, ld, lb)
    assert np.array_equal(np.asarray(back, np.float64), np.full((3, 4), -60000.0))
    conv = vera_jax.merge(W.T, A, B, ld, lb, layout="conv1d")
    assert np.array_equal(np.asarray(conv, np.float64), np.full((4, 3), 10000.0))


def test_merge_of_finite_float32_lambdas_still_merges():
    model = Two()
    apply_vera(model, ["fc1"], r=8, seed=1)
    layer = model.fc1
    layer.lambda_b[...] = jnp.linspace(-1, 1, 64)
    x = jnp.ones((2, 64))
    y = np.asarray(model(x))
    # each side within C eps S of the exact model on any machine (spec 5.2.3, derived C per layer, summed:
    # fc1 forward on both sides plus merge on the merged side, fc2 forward on both; S propagated through fc2)
    from vera_ref.tolerance import constant, forward_magnitude
    as64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    k1, b1, k2, b2 = (as64(t[...]) for t in (layer.base.kernel, layer.base.bias, model.fc2.kernel, model.fc2.bias))
    S = forward_magnitude(np.abs(as64(x)), k1, b1, as64(layer.A[...]), as64(layer.B[...]), as64(layer.lambda_d[...]),
                          as64(layer.lambda_b[...]), layout="conv1d") @ np.abs(k2) + np.abs(b2)
    sizes = dict(N=2, in_features=64, out_features=64, r=8)
    c = (2 * constant("forward", "float32", **sizes) + constant("merge", "float32", **sizes)
         + 2 * constant("forward", "float32", N=2, in_features=64, out_features=32, r=1))
    merge_and_unload(model)
    assert type(model.fc1) is nnx.Linear
    assert (np.abs(as64(model(x)) - y) <= 1.01 * c * 2.0**-23 * S).all()  # 1.01: second-order terms


# -- finding 7: load_adapter -------------------------------------------------------------------------------

def _adapter(vector_dtype="float32"):
    return vera_ref.new_adapter([ModuleSpec("fc1", 64, 64), ModuleSpec("fc2", 64, 32)], r=8, seed=2,
                                vector_dtype=vector_dtype)


@pytest.mark.parametrize("where", ["lambda_d", "lambda_b"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_in_memory_adapter_with_non_finite_values_is_refused_and_changes_nothing(where, bad):
    ad = _adapter()
    table = getattr(ad, where)
    table["fc2"] = table["fc2"].copy()
    table["fc2"][1] = bad
    model = Two()
    before = kernels(model)
    with pytest.raises(AdapterFileError) as e:
        load_adapter(model, ad)
    assert str(e.value) == f"fc2.{where}: contains non-finite values (NaN or infinity)"
    assert not vera_layers(model) and all(np.array_equal(kernels(model)[n], before[n]) for n in before)


def test_in_memory_adapter_with_a_missing_or_misshapen_vector_is_refused():
    ad = _adapter()
    del ad.lambda_b["fc1"]
    with pytest.raises(AdapterFileError, match=r"^fc1\.lambda_b: missing$"):
        load_adapter(Two(), ad)
    ad = _adapter()
    ad.lambda_d["fc1"] = np.zeros(7, np.float32)
    with pytest.raises(AdapterFileError, match=r"^fc1\.lambda_d: shape \[7\] must be \[8\]$"):
        load_adapter(Two(), ad)


def test_float64_file_with_values_that_overflow_float32_is_refused_when_held_as_float32(tmp_path):
    ad = _adapter("float64")
    ad.lambda_b["fc2"] = np.full(32, 1e300)
    path = tmp_path / "big.safetensors"
    vera_ref.save_adapter(ad, path)  # a valid file: 1e300 is finite in float64 (spec 4.6 rule 25)
    model = Two()
    with pytest.raises(AdapterFileError, match=r"^fc2\.lambda_b: values overflow float32$"):
        load_adapter(model, path, vector_dtype="float32")
    assert not vera_layers(model)
    load_adapter(model, _adapter("float64"), vector_dtype="float32")  # finite values of the same file type load
    assert len(vera_layers(model)) == 2


def test_head_values_that_overflow_the_models_dtype_are_refused():
    model = Two(jnp.float16)
    ad = vera_ref.new_adapter([ModuleSpec("fc1", 64, 64)], r=8, seed=2)
    ad.extra["fc2.bias"] = (np.full(32, 1e6, np.float32), "float32")  # 1e6 is inf in float16
    bias = np.asarray(model.fc2.bias[...]).copy()
    with pytest.raises(AdapterFileError, match=r"^fc2\.bias: values overflow float16$"):
        load_adapter(model, ad)
    assert np.array_equal(np.asarray(model.fc2.bias[...]), bias) and not vera_layers(model)


def test_stored_projections_of_an_in_memory_adapter_are_checked():
    model = Two()
    apply_vera(model, ["fc1"], r=4, seed=0)
    ad = to_adapter(model)
    A, B = ad.projection(0)
    stored = vera_ref.AdapterConfig(**{**ad.config.__dict__, "generator": "stored", "seed": None})
    bad = vera_ref.Adapter(stored, ad.lambda_d, ad.lambda_b, stored={0: (A.copy(), B.copy())})
    bad.stored[0][0][0, 0] = np.nan
    with pytest.raises(AdapterFileError, match=r"contains non-finite values \(NaN or infinity\)$"):
        load_adapter(Two(), bad)


# -- vera_ref.values itself --------------------------------------------------------------------------------

@pytest.mark.parametrize("values,dtype,problem", [
    ([np.nan, 1.0], "float32", "contains non-finite values (NaN or infinity)"),
    ([1e300, 1.0], "float32", "values overflow float32"),
    ([7e4, 1.0], "float16", "values overflow float16"),
    ([3.4e38, 1.0], "bfloat16", "values overflow bfloat16"),  # finite in float32, rounds up to inf in bfloat16
    (["1", "2"], "float32", "is not an array of numbers"),
    ([1.0, 2.0, 3.0], "float32", "shape [3] must be [2]"),
])
def test_checked_values_problems(values, dtype, problem):
    with pytest.raises(AdapterFileError) as e:
        checked_values("v", values, (2,), dtype)
    assert e.value.problem == problem and e.value.field == "v"


def test_checked_values_rounds_and_takes_the_callers_error_type():
    out = checked_values("v", [1.0, 65504.0], (2,), "float16")
    assert out.dtype == np.float16 and out.tolist() == [1.0, 65504.0]
    assert checked_values("v", [1.00390625], (1,), "bfloat16").tolist() == [1.0]  # ties to even, held as float32

    class Mine(Exception):
        def __init__(self, field, problem):
            super().__init__(f"{field}={problem}")
    with pytest.raises(Mine, match="^v=values overflow float16$"):
        checked_values("v", [1e5, 0.0], (2,), np.float16, error=Mine)
