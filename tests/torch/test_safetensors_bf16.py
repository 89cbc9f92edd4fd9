"""Our container and the safetensors package read each other's bfloat16 tensors (spec 4.5), with torch as
the independent bfloat16 implementation."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
st_torch = pytest.importorskip("safetensors.torch")

from vera_ref import container, new_adapter, save_adapter  # noqa: E402
from vera_ref.dtypes import round_to  # noqa: E402


def test_our_bfloat16_vectors_read_by_safetensors(tmp_path):
    ad = new_adapter([("q", 4, 3)], r=2, vector_dtype="bfloat16")
    ad.lambda_b["q"] = round_to(np.array([1.5, -2.25, 3e-3]), "bfloat16")
    save_adapter(ad, tmp_path / "a.safetensors")
    got = st_torch.load_file(tmp_path / "a.safetensors")["q.lambda_b"]
    assert got.dtype == torch.bfloat16
    assert np.array_equal(got.float().numpy(), ad.lambda_b["q"])


def test_safetensors_bfloat16_read_by_our_container(tmp_path):
    t = {"x": torch.tensor([1.0, -3.5, 1e-20, 65280.0], dtype=torch.bfloat16)}
    st_torch.save_file(t, tmp_path / "b.safetensors", metadata={"k": "v"})
    assert np.array_equal(container.read(tmp_path / "b.safetensors")[1]["x"].data, t["x"].float().numpy())
