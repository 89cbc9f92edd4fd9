"""Short runs of the PEFT and ONNX-adapter fuzz harnesses (tools/fuzz_peft.py, tools/fuzz_onnx_adapter.py;
issue 23): a fixed seed, a few hundred cases, no escape, no multi-line message, the allocation peak of the
traced cases bounded. Time per case is the harnesses' own oracle at length, not asserted here (tests do
not time things). Long runs and their figures: README "## Tests"."""
import sys
from pathlib import Path

import numpy as np
import pytest

TOOLS = Path(__file__).resolve().parents[2] / "tools"
sys.path.insert(0, str(TOOLS))
import fuzz_peft  # noqa: E402


def _clean(s, want):
    assert s["escapes"] == [], s["escapes"][0][1]
    assert s["multiline"] == [], s["multiline"][0][1]
    assert s["traced"] > 0 and s["peak"][0] < fuzz_peft.PEAK_MIB << 20, s["peak"]
    missing = set(want) - set(s["kinds"])
    assert not missing, f"the short run never produced {missing}: it did not exercise them ({dict(s['kinds'])})"


def test_peft_fuzz_short():
    s = fuzz_peft.fuzz(cases=200, seed=1)
    _clean(s, {"accepted", "ConversionError"})
    assert len(s["details"]) >= 20, s["details"]  # many distinct refusals, not one early exit


def test_onnx_adapter_fuzz_short():
    for m in ("onnxruntime", "onnx", "torch"):
        pytest.importorskip(m)
    import fuzz_onnx_adapter
    with np.errstate(invalid="ignore"):  # the mutants' own casts (NaN to int)
        s = fuzz_onnx_adapter.fuzz(cases=400, seed=1)
    _clean(s, {"accepted", "OnnxAdapterError", "AdapterFileError"})


# found by tools/fuzz_onnx_adapter.py --minutes 2 --seed 23 (4 of 246,730 cases): a name read from the
# file went into OnnxAdapterError's message unescaped
def test_a_parameter_name_with_a_newline_gives_a_one_line_message(tmp_path):
    for m in ("onnxruntime", "onnx", "torch"):
        pytest.importorskip(m)
    import onnxruntime as ort

    import fuzz_onnx_adapter
    from vera_onnx.adapters import read_checked
    from vera_onnx.errors import OnnxAdapterError
    env = fuzz_onnx_adapter.setup(tmp_path)
    shapes = env["models"]["hotswap.onnx"][1]
    params = {("\n" + k if k == "0.lambda_d" else k): v for k, v in env["good_params"].items()}
    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(1)
    fmt.set_model_version(1)
    fmt.set_parameters({k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v)) for k, v in params.items()})
    fmt.export_adapter(str(tmp_path / "nl.onnx_adapter"))
    with pytest.raises(OnnxAdapterError) as e:
        read_checked(tmp_path / "nl.onnx_adapter", shapes)
    assert "\n" not in str(e.value), repr(str(e.value))
