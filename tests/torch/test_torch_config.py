"""VeraConfig checks every field (ConfigError naming it); the torch generators are registered."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from vera_ref import generators  # noqa: E402
from vera_ref.errors import ProjectionError, VeraError  # noqa: E402
from vera_torch import ConfigError, VeraConfig, peft_projection, projection  # noqa: E402

BAD = [
    (dict(r=0), "r: must be an integer >= 1, got 0"),
    (dict(r=True), "r: must be an integer >= 1, got True"),
    (dict(r=2.0), "r: must be an integer >= 1, got 2.0"),
    (dict(seed=True), "seed: must be an integer, got bool"),
    (dict(seed=-1), "seed: must be in [0, 2^64), got -1"),
    (dict(seed=2**64), "seed: must be in [0, 2^64), got 18446744073709551616"),
    (dict(seed="1"), "seed: must be an integer, got str"),
    (dict(generator="philox"), "generator: must be one of philox4x32-10, stored, peft-mt19937, got 'philox'"),
    (dict(generator="peft-mt19937", sharing="per-module"),
     "sharing: the peft-mt19937 generator supports sharing 'shared' only, got 'per-module'"),
    (dict(sharing="all"), "sharing: must be one of shared, per-module, got 'all'"),
    (dict(d_initial=float("inf")), "d_initial: must be a finite number, got inf"),
    (dict(d_initial=float("nan")), "d_initial: must be a finite number, got nan"),
    (dict(d_initial=True), "d_initial: must be a number, got True"),
    (dict(d_initial="0.1"), "d_initial: must be a number, got '0.1'"),
    (dict(d_initial=1e6, vector_dtype="float16"), "d_initial: 1000000.0 overflows vector_dtype float16"),
    (dict(dropout=1.0), "dropout: must be a number in [0, 1), got 1.0"),
    (dict(dropout=-0.1), "dropout: must be a number in [0, 1), got -0.1"),
    (dict(dropout=float("nan")), "dropout: must be a number in [0, 1), got nan"),
    (dict(vector_dtype="int8"), "vector_dtype: must be one of float32, float16, bfloat16, float64, got 'int8'"),
    (dict(vector_dtype=torch.int32), "vector_dtype: must be one of float32, float16, bfloat16, float64, got torch.int32"),
    (dict(target_modules=[]), "target_modules: must be a regex string or a non-empty list of module names, got []"),
    (dict(target_modules=["q", 3]), "target_modules: must be a regex string or a non-empty list of module names, "
                                    "got ['q', 3]"),
    (dict(target_modules="(q"), "target_modules: is not a valid regular expression (missing ), unterminated "
                                "subpattern at position 0)"),
    (dict(modules_to_save=[""]), "modules_to_save: must be a regex string or a non-empty list of module names, "
                                 "got ['']"),
]


@pytest.mark.parametrize("kw, message", BAD, ids=[m.split(":")[0] + str(i) for i, (_, m) in enumerate(BAD)])
def test_every_field_is_checked(kw, message):
    with pytest.raises(ConfigError) as e:
        VeraConfig(**kw)
    assert str(e.value) == message
    assert isinstance(e.value, VeraError) and isinstance(e.value, ValueError)
    assert e.value.field == message.split(":")[0]


def test_good_values_are_normalised():
    c = VeraConfig(r=np.int64(4), seed=np.uint64(2**64 - 1), d_initial=1, vector_dtype="bfloat16",
                   target_modules=("query",), generator="stored")
    assert (c.r, c.seed, c.d_initial, c.vector_dtype, c.target_modules) == (4, 2**64 - 1, 1.0, torch.bfloat16,
                                                                            ["query"])
    assert type(c.r) is int and type(c.seed) is int and type(c.d_initial) is float


def test_torch_generators_are_registered_and_bit_identical_to_numpy():
    assert generators.get("philox4x32-10").device("torch") is projection
    assert generators.get("peft-mt19937").device("torch") is peft_projection
    for name in ("philox4x32-10", "peft-mt19937"):
        gen = generators.get(name)
        A, B = gen.device("torch")(2**63 + 5, 5, 7, 9, 0, "cpu")
        nA, nB = gen.projection(2**63 + 5, 5, 7, 9, 0)
        assert np.array_equal(A.numpy().view(np.uint32), nA.view(np.uint32))
        assert np.array_equal(B.numpy().view(np.uint32), nB.view(np.uint32))
    with pytest.raises(ProjectionError, match=r"^seed must be an integer, got bool$"):
        projection(True, 2, 2, 2)
    with pytest.raises(ProjectionError, match=r"^r must be in \[1, 17179869184\], got 0$"):
        projection(1, 0, 2, 2)
    with pytest.raises(ProjectionError, match=r"^group applies to philox4x32-10 only"):
        peft_projection(1, 2, 2, 2, group=1)
