"""The main job: VeRA on a real pretrained transformer, offline, compared, then shipped to ONNX Runtime.

    vera-ref demo [--steps 300] [--r 256] [--targets query,value] [--out results]

1. Data: Rotten Tomatoes snippets (fresh vs rotten), split by movie. Model: all-MiniLM-L6-v2.
2. Methods on the same split and step budget: majority class, logistic-regression probe on
   frozen embeddings, head only, VeRA (query/value, r=256) + head, PEFT LoRA r=8 + head.
3. Ship: save the VeRA adapter, reload it in a fresh process (bit-identical logits), merge and
   export to ONNX (ORT logits vs torch), serve two VeRA adapters hot-swapped in one ORT session.
4. results/: results.json, results.md (the table), training_curve.png, the adapter files and ONNX models.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _step(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _acc(pred, labels) -> float:
    return float((np.asarray(pred) == np.asarray(labels)).mean())


def _file_bytes(path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*.safetensors")) if Path(path).is_dir() \
        else Path(path).stat().st_size


def _positive(kind):
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not v > 0 or (kind is float and not np.isfinite(v)):
            raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text!r}")
        return v
    parse.__name__ = f"positive {kind.__name__}"
    return parse


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The demo's options; every value is checked here or in ``check_args`` before any training starts."""
    ap.add_argument("--out", default="results", help="results folder (default: results)")
    ap.add_argument("--steps", type=_positive(int), default=250, help="training steps for every method (default 250)")
    ap.add_argument("--batch", type=_positive(int), default=16, help="batch size (default 16)")
    ap.add_argument("--r", type=_positive(int), default=256, help="VeRA rank (default 256)")
    ap.add_argument("--targets", default="query,value", help="adapted modules, comma-separated suffixes")
    ap.add_argument("--lr", type=_positive(float), default=3e-2, help="VeRA and head learning rate (default 3e-2)")
    ap.add_argument("--lora-lr", type=_positive(float), default=1e-3, help="LoRA learning rate (default 1e-3)")
    ap.add_argument("--vector-dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"),
                    help="dtype of the vectors in the shipped VeRA file (default bfloat16, spec 4.5); the "
                         "table's accuracy is the shipped adapter's")
    ap.add_argument("--model-dir", help="another BERT-style model folder (config.json, model.safetensors, "
                                        "tokenizer.json) instead of all-MiniLM-L6-v2")
    ap.add_argument("--limit", type=_positive(int), help="use only this many train and test snippets (a quick run)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=_positive(int), default=2, help="torch threads (default 2, this machine's cores)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vera-ref demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    return ap


def check_targets(model, targets: list[str]) -> None:
    """Every --targets entry must name at least one nn.Linear of the model (a suffix of its path),
    checked before any baseline or training runs."""
    from torch import nn

    from vera_ref.resolve import UsageError
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    for t in targets:
        if not t or not any(n == t or n.endswith("." + t) for n in linear):
            names = sorted({n.rpartition(".")[2] for n in linear})
            raise UsageError(f"--targets: {t!r} names no linear layer of the model (its linear layers end in "
                             f"{', '.join(names)})")


def run(args) -> dict:
    import torch
    from vera_torch import VeraConfig, get_vera_model

    from .assets import model_dir
    from .data import load
    from .minilm import Classifier, Tokenizer, load_bert
    from .train import embed, logistic_probe, logits_of, train_head, train_model

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    targets = args.targets.split(",")
    _step("1/7 data and model (offline: both come from PyPI wheels, sha256-checked)")
    train, test = load(seed=args.seed)
    if args.limit:
        train.texts, train.labels = train.texts[: args.limit], train.labels[: args.limit]
        test.texts, test.labels = test.texts[: args.limit], test.labels[: args.limit]
    d = model_dir(args.model_dir)
    bert, cfg = load_bert(d)
    check_targets(bert, targets)
    tok = Tokenizer(d)
    print(f"      {len(train.texts)} train / {len(test.texts)} test snippets from {len(set(train.movies))} / "
          f"{len(set(test.movies))} movies (disjoint); model: {cfg['num_hidden_layers']} layers, hidden "
          f"{cfg['hidden_size']}")
    rows, curves = [], {}

    def row(method, acc, params, nbytes, seconds, note=""):
        rows.append({"method": method, "test_accuracy": round(acc, 4), "trainable_params": int(params),
                     "adapter_bytes": int(nbytes), "wall_seconds": round(seconds, 1), "note": note})
        print(f"      {method:<34} accuracy {acc:.4f}  params {params:>9,}  bytes {nbytes:>10,}  {seconds:6.1f} s")

    _step("2/7 baselines: majority class, logistic probe and head only on frozen mean-pooled embeddings")
    t0 = time.perf_counter()
    Xtr, Xte = embed(bert, tok, train.texts), embed(bert, tok, test.texts)
    t_embed = time.perf_counter() - t0
    majority = int(np.mean(train.labels) >= 0.5)
    row("majority class", _acc([majority] * len(test.labels), test.labels), 0, 0, 0.0)
    predict, secs = logistic_probe(Xtr, train.labels)
    row("linear probe (logistic regression)", _acc(predict(Xte).numpy(), test.labels), Xtr.shape[1] * 2 + 2,
        (Xtr.shape[1] * 2 + 2) * 4, secs + t_embed, "L-BFGS, L2 1e-3, embeddings included in time")
    head, losses, secs = train_head(Xtr, train.labels, steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed)
    curves["head only"] = losses
    with torch.no_grad():
        row("head only", _acc(head(Xte).argmax(1).numpy(), test.labels), Xtr.shape[1] * 2 + 2,
            (Xtr.shape[1] * 2 + 2) * 4, secs + t_embed, f"AdamW lr {args.lr}")

    def classifier():
        clf = Classifier(cfg, bert=copy.deepcopy(bert))
        torch.manual_seed(args.seed)
        clf.classifier.reset_parameters()
        return clf

    def vera_run(seed: int, tag: str, steps: int):
        torch.manual_seed(seed)
        m = get_vera_model(classifier(), VeraConfig(r=args.r, target_modules=targets, seed=0,
                                                    modules_to_save=["classifier"]))
        losses, secs = train_model(m, tok, train.texts, train.labels, steps=steps, batch=args.batch,
                                   lr=args.lr, seed=seed, desc=f"VeRA {tag}")
        return m, losses, secs

    _step(f"3/7 VeRA r={args.r} on {'/'.join(targets)} + head, {args.steps} steps, AdamW lr {args.lr}")
    trained, losses, secs = vera_run(args.seed, "a", args.steps)
    curves[f"VeRA r={args.r}"] = losses
    n_vera = sum(p.numel() for p in trained.parameters() if p.requires_grad)
    adapter_path = out / "vera_adapter.safetensors"
    trained.save_adapter(adapter_path, packed=True, vector_dtype=args.vector_dtype,
                         base_model_name="sentence-transformers/all-MiniLM-L6-v2",
                         provenance={"task": "rotten tomatoes fresh vs rotten", "steps": args.steps, "lr": args.lr})
    from vera_torch import VeraModel
    # the shipped adapter as a user loads it: stored vectors held in float32 (exact), float32 math
    vera = VeraModel.from_adapter(classifier(), adapter_path, vector_dtype="float32").eval()
    vera_logits = logits_of(vera, tok, test.texts)
    row(f"VeRA r={args.r} + head (ours)", _acc(vera_logits.argmax(1).numpy(), test.labels), n_vera,
        adapter_path.stat().st_size, secs, f"AdamW lr {args.lr}; the shipped file: {args.vector_dtype} vectors "
                                            "+ float32 head, A and B from the seed; accuracy of that file")

    _step(f"4/7 PEFT LoRA r=8 on {'/'.join(targets)} + head, {args.steps} steps, AdamW lr {args.lora_lr}")
    import peft
    lora = peft.get_peft_model(classifier(), peft.LoraConfig(r=8, lora_alpha=16, target_modules=targets,
                                                             modules_to_save=["classifier"]))
    losses, secs = train_model(lora, tok, train.texts, train.labels, steps=args.steps, batch=args.batch,
                               lr=args.lora_lr, seed=args.seed, desc="LoRA")
    curves["LoRA r=8 (PEFT)"] = losses
    lora_logits = logits_of(lora, tok, test.texts)
    lora.save_pretrained(out / "lora_adapter")
    row("LoRA r=8 + head (PEFT)", _acc(lora_logits.argmax(1).numpy(), test.labels),
        sum(p.numel() for p in lora.parameters() if p.requires_grad), _file_bytes(out / "lora_adapter"), secs,
        f"AdamW lr {args.lora_lr}, alpha 16")

    _step("5/7 reload the VeRA adapter in a fresh process: logits must be bit-identical")
    (out / "test_texts.json").write_text(json.dumps(test.texts))
    np.save(out / "vera_test_logits.npy", vera_logits.numpy())
    cmd = [sys.executable, "-m", "vera_demo.reload", "--adapter", str(adapter_path), "--texts",
           str(out / "test_texts.json"), "--out", str(out / "reloaded_logits.npy"), "--threads", str(args.threads)]
    if args.model_dir:
        cmd += ["--model-dir", args.model_dir]
    subprocess.run(cmd, check=True)
    reloaded = np.load(out / "reloaded_logits.npy")
    bit_identical = bool(np.array_equal(reloaded, vera_logits.numpy()))
    print(f"      bit-identical: {bit_identical}")

    _step("6/7 merge and export to ONNX; ONNX Runtime against torch")
    import onnxruntime as ort

    from vera_onnx import VeraOnnxSession, export
    ids, mask = tok(test.texts[:64])
    export(vera, (ids, mask), out / "vera_merged.onnx", input_names=["input_ids", "attention_mask"],
           output_names=["logits"])
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(out / "vera_merged.onnx"), so, providers=["CPUExecutionProvider"])
    ort_logits = np.concatenate([sess.run(None, {"input_ids": a.numpy(), "attention_mask": b.numpy()})[0]
                                 for a, b in (tok(test.texts[i: i + 64]) for i in range(0, len(test.texts), 64))])
    ort_diff = float(np.abs(ort_logits - vera_logits.numpy()).max())
    ort_agree = float((ort_logits.argmax(1) == vera_logits.numpy().argmax(1)).mean())
    print(f"      ORT vs torch: max |logit diff| {ort_diff:.2e}, same prediction on {ort_agree:.2%} of the test set")

    _step(f"7/7 a second VeRA adapter (another seed, {max(1, args.steps // 5)} steps), both served from one "
          "hot-swap ORT session")
    trained_b, losses_b, _ = vera_run(args.seed + 1, "b", max(1, args.steps // 5))
    trained_b.save_adapter(out / "vera_adapter_b.safetensors", packed=True, vector_dtype=args.vector_dtype)
    vera_b = VeraModel.from_adapter(classifier(), out / "vera_adapter_b.safetensors", vector_dtype="float32").eval()
    export(vera, (ids, mask), out / "vera_hotswap.onnx", mode="hotswap", projections="generator",
           input_names=["input_ids", "attention_mask"], output_names=["logits"])
    served = VeraOnnxSession(out / "vera_hotswap.onnx")
    served.load_adapter("a", adapter_path)
    served.load_adapter("b", out / "vera_adapter_b.safetensors")
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    serving = {}
    for name, model in (("a", vera), ("b", vera_b)):
        with torch.no_grad():
            want = model.eval()(input_ids=ids, attention_mask=mask).numpy()
        got = served.run(None, feeds, adapter=name)[0]
        serving[name] = float(np.abs(got - want).max())
    with torch.no_grad():
        base_diff = float(np.abs(served.run(None, feeds)[0] - logits_of(classifier(), tok, test.texts[:64]).numpy()).max())
    print(f"      hot-swap vs torch, max |logit diff|: adapter a {serving['a']:.2e}, adapter b {serving['b']:.2e}, "
          f"no adapter (base + untrained head) {base_diff:.2e}")

    total = time.perf_counter() - t_start
    results = {
        "model": "all-MiniLM-L6-v2" if not args.model_dir else args.model_dir,
        "data": "Rotten Tomatoes snippets (Pang & Lee 2004), fresh vs rotten, split by movie",
        "train": len(train.texts), "test": len(test.texts), "steps": args.steps, "batch": args.batch,
        "r": args.r, "targets": targets, "rows": rows,
        "ship": {"reload_bit_identical": bit_identical, "onnx_merged_max_abs_diff": ort_diff,
                 "onnx_merged_same_prediction": ort_agree, "hotswap_max_abs_diff": serving,
                 "hotswap_no_adapter_vs_base_max_abs_diff": base_diff},
        "total_seconds": round(total, 1), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    md = ["| method | test accuracy | trainable params | adapter bytes | wall s |", "|---|---|---|---|---|"]
    md += [f"| {r['method']} | {r['test_accuracy']:.4f} | {r['trainable_params']:,} | {r['adapter_bytes']:,} | "
           f"{r['wall_seconds']} |" for r in rows]
    (out / "results.md").write_text("\n".join(md) + "\n")
    _plot(curves, out / "training_curve.png")
    _step(f"done in {total:.0f} s; table in {out / 'results.md'}, curve in {out / 'training_curve.png'}")
    print("\n".join(md))
    return results


def _plot(curves: dict[str, list[float]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, losses in curves.items():
        k = max(1, len(losses) // 15)
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax.plot(np.arange(len(smooth)) + k, smooth, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (moving average)")
    ax.set_title("Rotten Tomatoes, all-MiniLM-L6-v2")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
