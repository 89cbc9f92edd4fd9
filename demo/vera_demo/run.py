"""The main job: VeRA on a real pretrained transformer, offline, compared, then shipped to ONNX Runtime.

    vera-ref demo [--steps 250] [--r 256] [--targets query,value] [--out results] [--keep-models]

1. Data: Rotten Tomatoes snippets (fresh vs rotten), split by movie. Model: all-MiniLM-L6-v2.
2. Methods on the same split and step budget: majority class, logistic-regression probe on
   frozen embeddings, head only, VeRA (query/value, r=256) + head, PEFT LoRA r=8 + head; VeRA and
   LoRA each try the same number of learning rates, chosen on a validation split of the training
   movies (never the test set).
3. Ship: save the VeRA adapter, reload it in a fresh process (bit-identical logits), merge and
   export to ONNX (ORT logits vs torch), serve every VeRA adapter trained from one multi-mode ORT
   session in one mixed batch, checked row by row against torch.
4. results/: results.json, results.md (the table), results.png (with the training curves), the adapter
   files (the ONNX models only with --keep-models).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


CURVE_SNIPPETS = 200  # validation snippets evaluated along training (the accuracy-over-steps curve)


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
    ap.add_argument("--lr", type=_positive(float), default=3e-2,
                    help="VeRA and head learning rate, the centre of VeRA's tuning grid (default 3e-2)")
    ap.add_argument("--lora-lr", type=_positive(float), default=1e-3,
                    help="LoRA learning rate, the centre of LoRA's tuning grid (default 1e-3)")
    ap.add_argument("--tune", type=_positive(int), default=3,
                    help="learning rates tried per method, VeRA and LoRA alike (the same budget): the centre "
                         "times 3^k around it, chosen on a validation split of the training movies (default 3; "
                         "1 = no tuning)")
    ap.add_argument("--vector-dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"),
                    help="dtype of the vectors in the shipped VeRA file (default bfloat16, spec 4.5); the "
                         "table's accuracy is the shipped adapter's")
    ap.add_argument("--model-dir", help="another BERT-style model folder (config.json, model.safetensors, "
                                        "tokenizer.json) instead of all-MiniLM-L6-v2")
    ap.add_argument("--limit", type=_positive(int), help="use only this many train and test snippets (a quick run)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=_positive(int), default=2, help="torch threads (default 2, this machine's cores)")
    ap.add_argument("--keep-models", action="store_true",
                    help="also keep the ~90 MB ONNX models in the results folder (default: checked, then deleted)")


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


def lr_grid(centre: float, n: int) -> list[float]:
    """``n`` learning rates around ``centre`` in steps of 3x (n=3: centre/3, centre, 3*centre)."""
    return [centre * 3.0 ** (k - (n - 1) / 2) for k in range(n)]


def run(args) -> dict:
    import tempfile

    import torch
    from vera_torch import VeraConfig, VeraModel, get_vera_model

    from .assets import model_dir
    from .data import load, validation_split
    from .minilm import Classifier, Tokenizer, load_bert
    from .train import embed, logistic_probe, logits_of, step_seconds, train_head, train_model

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    onnx_dir = out if args.keep_models else Path(tempfile.mkdtemp(prefix="vera-demo-onnx-"))
    t_start = time.perf_counter()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    targets = args.targets.split(",")
    _step("1/8 data and model (offline: both come from PyPI wheels, sha256-checked)")
    train, test = load(seed=args.seed)
    fit, val = validation_split(train, seed=args.seed)
    if args.limit:
        for sp in (fit, val, test):
            sp.texts, sp.labels, sp.movies = sp.texts[: args.limit], sp.labels[: args.limit], sp.movies[: args.limit]
    d = model_dir(args.model_dir)
    bert, cfg = load_bert(d)
    check_targets(bert, targets)
    tok = Tokenizer(d)
    print(f"      {len(fit.texts)} train / {len(val.texts)} validation / {len(test.texts)} test snippets from "
          f"{len(set(fit.movies))} / {len(set(val.movies))} / {len(set(test.movies))} movies (disjoint); model: "
          f"{cfg['num_hidden_layers']} layers, hidden {cfg['hidden_size']}")
    rows, curves, tuning = [], {}, {}
    import peft

    def classifier():
        clf = Classifier(cfg, bert=copy.deepcopy(bert))
        torch.manual_seed(args.seed)
        clf.classifier.reset_parameters()
        return clf

    def new_vera():
        return get_vera_model(classifier(), VeraConfig(r=args.r, target_modules=targets, seed=0,
                                                       modules_to_save=["classifier"]))

    def new_lora():
        return peft.get_peft_model(classifier(), peft.LoraConfig(r=8, lora_alpha=16, target_modules=targets,
                                                                 modules_to_save=["classifier"]))

    # the up-front estimate: measured step times times the planned steps, plus measured evaluation cost
    t_vera = step_seconds(new_vera(), tok, fit.texts, fit.labels, batch=args.batch)
    t_lora = step_seconds(new_lora(), tok, fit.texts, fit.labels, batch=args.batch)
    t0 = time.perf_counter()
    logits_of(classifier(), tok, val.texts[:64])
    per_text = (time.perf_counter() - t0) / min(64, len(val.texts))
    curve_texts = val.texts[:CURVE_SNIPPETS]
    n_evals = args.steps // max(1, args.steps // 5) + 1
    texts_evaluated = (len(fit.texts) + len(val.texts) + len(test.texts)  # embeddings of the baselines
                       + 2 * args.tune * (n_evals * len(curve_texts) + len(val.texts))  # curves and choices
                       + 6 * len(test.texts))  # test accuracies, reload, ONNX checks
    estimate = args.tune * args.steps * (t_vera + t_lora) + texts_evaluated * per_text * 1.3 + 40
    print(f"      estimated total: {estimate / 60:.0f} min ({args.tune} learning rates x {args.steps} steps for VeRA "
          f"at {t_vera:.2f} s/step and for LoRA at {t_lora:.2f} s/step, plus evaluation and export)", flush=True)

    def row(method, acc, params, nbytes, seconds, note=""):
        rows.append({"method": method, "test_accuracy": round(acc, 4), "trainable_params": int(params),
                     "adapter_bytes": int(nbytes), "wall_seconds": round(seconds, 1), "note": note})
        print(f"      {method:<34} accuracy {acc:.4f}  params {params:>9,}  bytes {nbytes:>10,}  {seconds:6.1f} s")

    _step("2/8 baselines: majority class, logistic probe and head only on frozen mean-pooled embeddings")
    t0 = time.perf_counter()
    Xtr, Xte = embed(bert, tok, fit.texts), embed(bert, tok, test.texts)
    t_embed = time.perf_counter() - t0
    majority = int(np.mean(fit.labels) >= 0.5)
    row("majority class", _acc([majority] * len(test.labels), test.labels), 0, 0, 0.0)
    predict, secs = logistic_probe(Xtr, fit.labels)
    row("linear probe (logistic regression)", _acc(predict(Xte).numpy(), test.labels), Xtr.shape[1] * 2 + 2,
        (Xtr.shape[1] * 2 + 2) * 4, secs + t_embed, "L-BFGS, L2 1e-3, embeddings included in time")
    head, losses, secs = train_head(Xtr, fit.labels, steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed)
    curves["head only"] = {"loss": losses}
    with torch.no_grad():
        row("head only", _acc(head(Xte).argmax(1).numpy(), test.labels), Xtr.shape[1] * 2 + 2,
            (Xtr.shape[1] * 2 + 2) * 4, secs + t_embed, f"AdamW lr {args.lr}")

    def tune(label: str, make, centre: float, step_no: str):
        """Train one model per learning rate of the grid on the fit split; choose by validation accuracy."""
        trials = []
        for i, lr in enumerate(lr_grid(centre, args.tune)):
            _step(f"{step_no} {label}: learning rate {lr:.3g} ({i + 1}/{args.tune}), {args.steps} steps, AdamW")
            m = make()

            def evaluate(m=m):
                return _acc(logits_of(m, tok, curve_texts).argmax(1).numpy(), val.labels[: len(curve_texts)])
            losses, secs, curve = train_model(m, tok, fit.texts, fit.labels, steps=args.steps, batch=args.batch,
                                              lr=lr, seed=args.seed, desc=f"{label} lr {lr:.3g}", evaluate=evaluate,
                                              eval_every=max(1, args.steps // 5))
            val_acc = _acc(logits_of(m, tok, val.texts).argmax(1).numpy(), val.labels)
            print(f"      validation accuracy {val_acc:.4f} ({secs:.0f} s)")
            trials.append({"lr": lr, "model": m, "losses": losses, "seconds": secs, "curve": curve,
                           "validation_accuracy": val_acc})
        best = max(trials, key=lambda t: t["validation_accuracy"])
        tuning[label] = {"chosen_lr": best["lr"], "trials": [{"lr": t["lr"], "validation_accuracy": t["validation_accuracy"],
                                                            "train_seconds": round(t["seconds"], 1)} for t in trials]}
        print(f"      {label}: chosen learning rate {best['lr']:.3g} (validation accuracy {best['validation_accuracy']:.4f})")
        return best, trials

    vera_label, lora_label = f"VeRA r={args.r}", "LoRA r=8"
    best_vera, vera_trials = tune(vera_label, new_vera, args.lr, "3/8")
    curves[vera_label] = {"loss": best_vera["losses"], "validation": best_vera["curve"]}
    n_vera = sum(p.numel() for p in best_vera["model"].parameters() if p.requires_grad)
    adapter_path = out / "vera_adapter.safetensors"
    trial_paths = []
    for i, t in enumerate(vera_trials):  # every trained VeRA adapter is kept (a few KB each) and served below
        path = adapter_path if t is best_vera else out / f"vera_adapter_lr{i + 1}.safetensors"
        t["model"].save_adapter(path, packed=True, vector_dtype=args.vector_dtype,
                                base_model_name="sentence-transformers/all-MiniLM-L6-v2",
                                provenance={"task": "rotten tomatoes fresh vs rotten", "steps": args.steps,
                                            "lr": t["lr"]})
        trial_paths.append(path)
    # the shipped adapter as a user loads it: stored vectors held in float32 (exact), float32 math
    vera = VeraModel.from_adapter(classifier(), adapter_path, vector_dtype="float32").eval()
    vera_logits = logits_of(vera, tok, test.texts)
    row(f"VeRA r={args.r} + head (ours)", _acc(vera_logits.argmax(1).numpy(), test.labels), n_vera,
        adapter_path.stat().st_size, best_vera["seconds"],
        f"AdamW lr {best_vera['lr']:.3g} (of {args.tune}, on validation); the shipped file: {args.vector_dtype} "
        "vectors + float32 head, A and B from the seed; accuracy of that file")

    best_lora, lora_trials = tune(lora_label, new_lora, args.lora_lr, "4/8")
    curves[lora_label] = {"loss": best_lora["losses"], "validation": best_lora["curve"]}
    lora = best_lora["model"]
    lora_logits = logits_of(lora, tok, test.texts)
    lora.save_pretrained(out / "lora_adapter")
    row("LoRA r=8 + head (PEFT)", _acc(lora_logits.argmax(1).numpy(), test.labels),
        sum(p.numel() for p in lora.parameters() if p.requires_grad), _file_bytes(out / "lora_adapter"),
        best_lora["seconds"], f"AdamW lr {best_lora['lr']:.3g} (of {args.tune}, on validation), alpha 16")
    del vera_trials, lora_trials, best_lora, lora

    _step("5/8 reload the VeRA adapter in a fresh process: logits must be bit-identical")
    scratch = Path(tempfile.mkdtemp(prefix="vera-demo-"))
    (scratch / "test_texts.json").write_text(json.dumps(test.texts))
    cmd = [sys.executable, "-m", "vera_demo.reload", "--adapter", str(adapter_path), "--texts",
           str(scratch / "test_texts.json"), "--out", str(scratch / "reloaded_logits.npy"), "--threads",
           str(args.threads)]
    if args.model_dir:
        cmd += ["--model-dir", args.model_dir]
    subprocess.run(cmd, check=True)
    bit_identical = bool(np.array_equal(np.load(scratch / "reloaded_logits.npy"), vera_logits.numpy()))
    print(f"      bit-identical: {bit_identical}")

    _step("6/8 merge and export to ONNX; ONNX Runtime against torch")
    import onnxruntime as ort

    from vera_onnx import VeraOnnxSession, export
    ids, mask = tok(test.texts[:64])
    export(vera, (ids, mask), onnx_dir / "vera_merged.onnx", input_names=["input_ids", "attention_mask"],
           output_names=["logits"])
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(onnx_dir / "vera_merged.onnx"), so, providers=["CPUExecutionProvider"])
    ort_logits = np.concatenate([sess.run(None, {"input_ids": a.numpy(), "attention_mask": b.numpy()})[0]
                                 for a, b in (tok(test.texts[i: i + 64]) for i in range(0, len(test.texts), 64))])
    ort_diff = float(np.abs(ort_logits - vera_logits.numpy()).max())
    ort_agree = float((ort_logits.argmax(1) == vera_logits.numpy().argmax(1)).mean())
    print(f"      ORT vs torch: max |logit diff| {ort_diff:.2e}, same prediction on {ort_agree:.2%} of the test set")
    del sess

    names = [f"lr{i + 1}" for i in range(len(trial_paths))]
    _step(f"7/8 all {len(names)} VeRA adapters in ONE ONNX Runtime session, mixed row by row in one batch, "
          "checked against torch (each row against its own adapter's model)")
    export(vera, (ids, mask), onnx_dir / "vera_multi.onnx", mode="multi", capacity=len(names),
           projections="generator", input_names=["input_ids", "attention_mask"], output_names=["logits"])
    served = VeraOnnxSession(onnx_dir / "vera_multi.onnx")
    for name, path in zip(names, trial_paths):
        served.load_adapter(name, path)
    row_ids = [names[i % len(names)] for i in range(len(ids))]
    got = served.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}, adapter_ids=row_ids)[0]
    mixed = {}
    for name, path in zip(names, trial_paths):
        rows_of = [i for i, n in enumerate(row_ids) if n == name]
        single = VeraModel.from_adapter(classifier(), path, vector_dtype="float32").eval()
        with torch.no_grad():
            want = single(input_ids=ids[rows_of], attention_mask=mask[rows_of]).numpy()
        mixed[name] = float(np.abs(got[rows_of] - want).max())
    with torch.no_grad():
        base_rows = served.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()},
                               adapter_ids=[None] * len(ids))[0]
        base_diff = float(np.abs(base_rows - classifier().eval()(input_ids=ids, attention_mask=mask).numpy()).max())
    print(f"      one mixed batch of {len(ids)} rows over {len(names)} adapters vs torch, max |logit diff| per "
          f"adapter: " + ", ".join(f"{n} {v:.2e}" for n, v in mixed.items())
          + f"; rows with no adapter vs the base model {base_diff:.2e}")
    del served

    total = time.perf_counter() - t_start
    results = {
        "model": "all-MiniLM-L6-v2" if not args.model_dir else args.model_dir,
        "data": "Rotten Tomatoes snippets (Pang & Lee 2004), fresh vs rotten, split by movie",
        "train": len(fit.texts), "validation": len(val.texts), "test": len(test.texts), "steps": args.steps,
        "batch": args.batch, "r": args.r, "targets": targets, "rows": rows, "tuning": tuning,
        "curves": {k: {"validation": v.get("validation", []), "loss": [round(float(x), 5) for x in v["loss"]]}
                   for k, v in curves.items()},  # enough to redraw results.png
        "ship": {"reload_bit_identical": bit_identical, "onnx_merged_max_abs_diff": ort_diff,
                 "onnx_merged_same_prediction": ort_agree, "onnx_multi_mixed_batch_max_abs_diff": mixed,
                 "onnx_multi_no_adapter_vs_base_max_abs_diff": base_diff,
                 "onnx_models_kept": bool(args.keep_models)},
        "estimated_seconds": round(estimate, 1), "total_seconds": round(total, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "torch": torch.__version__,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    md = ["| method | test accuracy | trainable params | adapter bytes | wall s |", "|---|---|---|---|---|"]
    md += [f"| {r['method']} | {r['test_accuracy']:.4f} | {r['trainable_params']:,} | {r['adapter_bytes']:,} | "
           f"{r['wall_seconds']} |" for r in rows]
    (out / "results.md").write_text("\n".join(md) + "\n")
    _step("8/8 results: table, JSON and the picture")
    _plot(rows, curves, out / "results.png")
    if not args.keep_models:
        shutil.rmtree(onnx_dir, ignore_errors=True)
    shutil.rmtree(scratch, ignore_errors=True)
    _step(f"done in {total:.0f} s (estimated {estimate:.0f} s); table in {out / 'results.md'}, picture in "
          f"{out / 'results.png'}")
    print("\n".join(md))
    return results


def _plot(rows: list[dict], curves: dict[str, dict], path: Path) -> None:
    """Three panels: test accuracy against adapter bytes for every method, validation accuracy over
    training steps for the chosen VeRA and LoRA runs, and the training losses."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax0, ax1, ax2) = plt.subplots(1, 3, figsize=(15, 4.2))
    # one colour per method in every panel (rows and curves name a method by its first words)
    palette = {"majority": "tab:gray", "linear": "tab:orange", "head": "tab:green", "VeRA": "tab:red",
               "LoRA": "tab:purple"}

    def colour(name: str) -> str:
        return next((c for k, c in palette.items() if name.startswith(k)), "tab:blue")

    by_acc = sorted(rows, key=lambda r: r["test_accuracy"])
    widest = max(max(r["adapter_bytes"], 1) for r in rows)
    for i, r in enumerate(by_acc):
        x = max(r["adapter_bytes"], 1)
        ax0.scatter([x], [r["test_accuracy"]], s=60, color=colour(r["method"]))
        # close accuracies: the upper label goes above its point, the lower one below; points in the
        # right part of the (log) axis get their label on the left, so it stays inside the axes
        above = i > 0 and r["test_accuracy"] - by_acc[i - 1]["test_accuracy"] < 0.02
        below = i + 1 < len(by_acc) and by_acc[i + 1]["test_accuracy"] - r["test_accuracy"] < 0.02
        dy = 6 if above else -12 if below else -4
        left = x > 1 and np.log(x) > 0.75 * np.log(widest)
        ax0.annotate(r["method"].replace(" (logistic regression)", ""), (x, r["test_accuracy"]),
                     textcoords="offset points", xytext=(-6 if left else 6, dy), fontsize=8,
                     ha="right" if left else "left", color=colour(r["method"]))
    ax0.set_xscale("log")
    ax0.margins(x=0.08, y=0.12)
    ax0.set_xlabel("adapter file bytes (log; 1 = nothing stored)")
    ax0.set_ylabel("test accuracy")
    ax0.set_title("accuracy against what you ship")
    for name, c in curves.items():
        if c.get("validation"):
            steps, acc = zip(*c["validation"])
            ax1.plot(steps, acc, marker="o", label=name, color=colour(name))
        losses = c["loss"]
        k = max(1, len(losses) // 15)
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax2.plot(np.arange(len(smooth)) + k, smooth, label=name, color=colour(name))
    ax1.set_xlabel("step")
    ax1.set_ylabel(f"validation accuracy ({CURVE_SNIPPETS} snippets)")
    ax1.set_title("accuracy over training (chosen learning rates)")
    ax1.legend()
    ax2.set_xlabel("step")
    ax2.set_ylabel("training loss (moving average)")
    ax2.set_title("training loss")
    ax2.legend()
    fig.suptitle("Rotten Tomatoes fresh vs rotten, all-MiniLM-L6-v2")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
