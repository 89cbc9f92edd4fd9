"""Hostile or malformed PEFT checkpoints give one ConversionError line (NumPy only, no torch)."""
import json

import numpy as np
import pytest

from vera_ref import container
from vera_ref.errors import ConversionError
from vera_ref.peft_interop import peft_to_adapter

GOOD = {"peft_type": "VERA", "r": 2, "target_modules": ["q"], "projection_prng_key": 0, "save_projection": False,
        "bias": "none"}


def _write(d, cfg, r=2, out=3):
    d.mkdir(exist_ok=True)
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    container.write(d / "adapter_model.safetensors", {"format": "pt"}, {
        "base_model.model.enc.q.vera_lambda_d": (np.ones(r, np.float32), "F32"),
        "base_model.model.enc.q.vera_lambda_b": (np.ones(out, np.float32), "F32")})
    return d


def test_a_good_checkpoint_converts(tmp_path):
    ad = peft_to_adapter(_write(tmp_path / "p", GOOD), in_features=4)
    assert ad.config.generator == "peft-mt19937" and [m.name for m in ad.config.modules] == ["enc.q"]


@pytest.mark.parametrize("change, message", [
    ({"r": "2"}, "r must be a positive integer, got '2'"),
    ({"r": 0}, "r must be a positive integer, got 0"),
    ({"projection_prng_key": -1}, r"projection_prng_key must be an integer in \[0, 2\^64\), got -1"),
    ({"target_modules": 5}, "target_modules must be a string or a list of strings, got 5"),
    ({"target_modules": ["q", 1]}, r"target_modules must be a string or a list of strings, got \['q', 1\]"),
    ({"target_modules": "enc.(q"}, r"target_modules: 'enc.\(q' is not a valid regular expression"),
    ({"modules_to_save": "head"}, "modules_to_save must be a list of strings, got 'head'"),
    ({"layers_to_transform": ["0"]}, r"layers_to_transform must be an integer or a list of integers, got \['0'\]"),
    ({"d_initial": "0.1"}, "d_initial must be a finite number, got '0.1'"),
    ({"target_modules": ["k"]}, r"enc.q: target_modules \['k'\] do not select this module, so PEFT would not load"),
    ({"save_projection": True}, "save_projection is true but base_model.vera_A / vera_B are missing"),
    ({"bias": "all"}, "bias='all' is not VeRA's adapter"),
])
def test_bad_fields(tmp_path, change, message):
    with pytest.raises(ConversionError, match=message):
        peft_to_adapter(_write(tmp_path / "p", {**GOOD, **change}), in_features=4)


def test_bad_tensors_and_files(tmp_path):
    with pytest.raises(ConversionError, match=r"enc.q: vera_lambda_d \[3\] / vera_lambda_b \[3\] must be \[2\]"):
        peft_to_adapter(_write(tmp_path / "p", GOOD, r=3), in_features=4)
    d = _write(tmp_path / "big", GOOD)
    (d / "adapter_config.json").write_bytes(b" " * (1 << 20) + b"{}")
    with pytest.raises(ConversionError, match="adapter_config.json is larger than 1048576 bytes"):
        peft_to_adapter(d, in_features=4)
    (d / "adapter_config.json").write_text("[1]")
    with pytest.raises(ConversionError, match="peft_type is None, not 'VERA'"):
        peft_to_adapter(d, in_features=4)
