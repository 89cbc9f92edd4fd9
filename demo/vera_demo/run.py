"""The main job: VeRA on a real pretrained transformer, offline, compared, then shipped to ONNX Runtime.

    vera-ref demo [--steps 250] [--r 256] [--targets query,value] [--out results] [--full] [--keep-models]

1. Data: Rotten Tomatoes snippets (fresh vs rotten), split by movie. Model: all-MiniLM-L6-v2.
   The start of the run times a few real steps of each kind and prints the estimated total.
2. Methods on the same split, batches and step budget: majority class, logistic-regression probe
   on frozen embeddings, head only, VeRA (query/value, r=256) + head, PEFT LoRA r=8 + head; VeRA
   and LoRA tune their learning rate with the same schedule on a validation split of the training
   movies (never the test set): successive halving (every rate a short run, the better half
   continues, the best gets the full budget; a grid whose best rate is on its edge is widened),
   or with --full every rate of the grid trains the full budget (release 1.2.0's protocol).
3. Ship: save the VeRA adapter, reload it in a fresh process (bit-identical logits), merge and
   export to ONNX (ORT logits vs torch), serve every VeRA adapter trained from one multi-mode ORT
   session in one mixed batch, checked row by row against torch.
4. results/: results.json (with every validation number behind a choice, and where the time went),
   results.md (the table), results.png (with the training curves), the adapter files (the ONNX
   models only with --keep-models).
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

from .tuning import lr_grid  # noqa: F401  (the grid's definition; tests import it from here)

CURVE_SNIPPETS = 200  # --full: validation snippets evaluated along training (the accuracy-over-steps curve)
STEPS = 250  # the full budget of a method, default and --full alike (README "where the time goes")


def _step(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _acc(pred, labels) -> float:
    return float((np.asarray(pred) == np.asarray(labels)).mean())


def _file_bytes(path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*.safetensors")) if Path(path).is_dir() \
        else Path(path).stat().st_size


def _cores() -> int:
    """The cores this process may run on (its CPU affinity; os.cpu_count() where there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


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
    """The demo's options; every value is checked here or in ``check_targets`` before any training starts."""
    ap.add_argument("--out", default="results", help="results folder (default: results)")
    ap.add_argument("--steps", type=_positive(int), default=STEPS,
                    help=f"training steps of the full budget, for every method (default {STEPS})")
    ap.add_argument("--batch", type=_positive(int), default=16, help="batch size (default 16)")
    ap.add_argument("--r", type=_positive(int), default=256, help="VeRA rank (default 256)")
    ap.add_argument("--targets", default="query,value", help="adapted modules, comma-separated suffixes")
    ap.add_argument("--lr", type=_positive(float), default=3e-2,
                    help="VeRA and head learning rate, the centre of VeRA's tuning grid (default 3e-2)")
    ap.add_argument("--lora-lr", type=_positive(float), default=1e-3,
                    help="LoRA learning rate, the centre of LoRA's tuning grid (default 1e-3)")
    ap.add_argument("--tune", type=_positive(int), default=3,
                    help="learning rates of the grid per method, VeRA and LoRA alike: the centre times 3^k "
                         "around it, chosen on a validation split of the training movies (default 3; 1 = no "
                         "tuning). Successive halving adds one rate after the first short runs (beyond the "
                         "edge when the best rate is on it), the same for both methods")
    ap.add_argument("--full", action="store_true",
                    help="the long protocol of release 1.2.0: every rate of the grid trains the full budget on "
                         "random batches (about 3x the default's time) instead of successive halving on batches "
                         "grouped by length")
    ap.add_argument("--vector-dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"),
                    help="dtype of the vectors in the shipped VeRA file (default bfloat16, spec 4.5); the "
                         "table's accuracy is the shipped adapter's")
    ap.add_argument("--model-dir", help="another BERT-style model folder (config.json, model.safetensors, "
                                        "tokenizer.json) instead of all-MiniLM-L6-v2")
    ap.add_argument("--limit", type=_positive(int), help="use only this many train and test snippets (a quick run)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=_positive(int), default=_cores(),
                    help=f"torch threads (default: the cores present, {_cores()} here)")
    ap.add_argument("--keep-models", action="store_true",
                    help="also keep the ~90 MB ONNX models in the results folder (default: checked, then deleted)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vera-ref demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    return ap


def check_targets(model, targets: list[str]) -> None:
    """Every --targets entry must name at least one linear layer of the model (a suffix of its path),
    checked before any baseline or training runs (vera_torch's own listing of linear layers)."""
    from vera_ref.resolve import UsageError
    from vera_torch import linear_name_endings, unmatched_targets
    bad = [t for t in targets if not t] or unmatched_targets(model, targets)
    if bad:
        raise UsageError(f"--targets: {bad[0]!r} names no linear layer of the model (its linear layers end in "
                         f"{', '.join(linear_name_endings(model))})")


def _write(path: Path, text: str) -> None:
    """Every file of the demo is written atomically with a normal open()'s mode (0o666 & ~umask)."""
    from vera_ref.atomic import atomic_write_bytes
    atomic_write_bytes(path, text.encode())


def _copy_tree(src: Path, dst: Path) -> None:
    """Copy a folder file by file through atomic writes: safetensors' own writer makes 0600 files
    (a private temporary renamed into place), which is not the mode the rest of the demo's files get."""
    from vera_ref.atomic import atomic_write_bytes
    for f in sorted(src.rglob("*")):
        if f.is_file():
            (dst / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(dst / f.relative_to(src), f.read_bytes())


def run(args) -> dict:
    import tempfile

    from vera_ref.resolve import UsageError
    if os.path.lexists(args.out) and not os.path.isdir(args.out):  # before any work (README exit codes)
        raise UsageError(f"--out {args.out}: is a file; name a folder")

    from .progress import Clock
    clock = Clock()
    t_start = time.perf_counter()
    with clock("start: imports") as ph_imports:
        import peft
        import torch
        from vera_torch import VeraConfig, VeraModel, get_vera_model

        from . import estimate as E
        from .assets import model_dir
        from .data import load, validation_split
        from .minilm import Classifier, Tokenizer, load_bert
        from .plot import plot
        from .progress import Progress
        from .train import (Trial, batches, calibrate_steps, embed, grouped_batches, logistic_probe, logits_of,
                            train_head)
        from .tuning import full_schedule, halving_schedule, tune
    imports_s = time.perf_counter() - ph_imports.w

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    onnx_dir = out if args.keep_models else Path(tempfile.mkdtemp(prefix="vera-demo-onnx-"))
    scratch = Path(tempfile.mkdtemp(prefix="vera-demo-"))
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    targets = args.targets.split(",")
    _step("1/8 data and model (offline: both come from PyPI wheels, sha256-checked)")
    with clock("data, model and tokens") as ph_load:
        train, test = load(seed=args.seed)
        fit, val = validation_split(train, seed=args.seed)
        if args.limit:
            for sp in (fit, val, test):
                sp.texts, sp.labels, sp.movies = sp.texts[: args.limit], sp.labels[: args.limit], sp.movies[: args.limit]
        d = model_dir(args.model_dir)
        bert, cfg = load_bert(d)
        check_targets(bert, targets)
        tok = Tokenizer(d)
        fit_len, val_len, test_len = (tok.lengths(sp.texts) for sp in (fit, val, test))
    load_s = time.perf_counter() - ph_load.w
    print(f"      {len(fit.texts)} train / {len(val.texts)} validation / {len(test.texts)} test snippets from "
          f"{len(set(fit.movies))} / {len(set(val.movies))} / {len(set(test.movies))} movies (disjoint); model: "
          f"{cfg['num_hidden_layers']} layers, hidden {cfg['hidden_size']}; {args.threads} threads")
    rows, curves, tuning = [], {}, {}

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

    vera_label, lora_label = f"VeRA r={args.r}", "LoRA r=8"
    if args.full:  # release 1.2.0: random batches, every rate the full budget, a curve on a few snippets
        plan = list(batches(len(fit.texts), args.batch, args.steps, args.seed))
        schedule = full_schedule(args.steps, args.tune)
        curve_texts = val.texts[:CURVE_SNIPPETS]
    else:  # batches of similar length (less padding), successive halving, the curve from its rungs
        plan = grouped_batches(fit_len, args.batch, args.steps, args.seed)
        schedule = halving_schedule(args.steps, args.tune)
        curve_texts = val.texts

    # the up-front estimate: the cost of a training step of each method and of evaluating each model,
    # timed now on this machine, times the planned work (estimate.py)
    with clock("estimate: timing a few real steps"):
        step_cost = {vera_label: calibrate_steps(new_vera(), tok, fit.texts, fit.labels, plan, fit_len),
                     lora_label: calibrate_steps(new_lora(), tok, fit.texts, fit.labels, plan, fit_len)}
        eval_cost = {}
        probe = sorted(range(len(val.texts)), key=lambda i: val_len[i])[len(val.texts) // 4:][:96]
        for key, m in (("base", classifier()), (vera_label, new_vera()), (lora_label, new_lora())):
            logits_of(m, tok, [val.texts[i] for i in probe[:8]])  # warm-up
            seconds = []
            for half in (probe[::2], probe[1::2]):  # two timings, the faster kept (a burst of other load)
                t0 = time.perf_counter()
                logits_of(m, tok, [val.texts[i] for i in half])
                seconds.append((time.perf_counter() - t0) / E.eval_tokens([val_len[i] for i in half]))
            eval_cost[key] = min(seconds)
    costs = E.Costs(imports_s, load_s, step_cost, eval_cost)
    parts = E.plan(costs, labels=(vera_label, lora_label), schedule=schedule, steps_plan=plan, fit_lengths=fit_len,
                   val_lengths=val_len, curve_lengths=val_len[: len(curve_texts)], test_lengths=test_len,
                   n_vera_adapters=schedule.keep[0])
    estimate = time.perf_counter() - t_start + sum(parts.values())
    typical = float(np.mean([len(idx) * max(fit_len[i] for i in idx) for idx in plan]))  # padded tokens
    per_step = {k: a + b * typical for k, (a, b) in step_cost.items()}
    print(f"      estimated total: {estimate / 60:.1f} min ({schedule.name}: {schedule.total_steps()} training steps "
          f"per method, VeRA {per_step[vera_label]:.2f} s/step, LoRA {per_step[lora_label]:.2f} s/step as timed "
          f"now; " + ", ".join(f"{k} {v:.0f} s" for k, v in parts.items()) + ")", flush=True)

    def row(method, acc, params, nbytes, seconds, note=""):
        rows.append({"method": method, "test_accuracy": round(acc, 4), "trainable_params": int(params),
                     "adapter_bytes": int(nbytes), "wall_seconds": round(seconds, 1), "note": note})
        print(f"      {method:<34} accuracy {acc:.4f}  params {params:>9,}  bytes {nbytes:>10,}  {seconds:6.1f} s")

    _step("2/8 baselines: majority class, logistic probe and head only on frozen mean-pooled embeddings")
    with clock("baselines"):
        t0 = time.perf_counter()
        Xtr, Xte = embed(bert, tok, fit.texts, desc="embedding train"), embed(bert, tok, test.texts,
                                                                              desc="embedding test")
        t_embed = time.perf_counter() - t0
        majority = int(np.mean(fit.labels) >= 0.5)
        row("majority class", _acc([majority] * len(test.labels), test.labels), 0, 0, 0.0)
        predict, secs = logistic_probe(Xtr, fit.labels)
        row("linear probe (logistic regression)", _acc(predict(Xte).numpy(), test.labels), Xtr.shape[1] * 2 + 2,
            (Xtr.shape[1] * 2 + 2) * 4, secs + t_embed, "L-BFGS, L2 1e-3, embeddings included in time")
        head, losses, secs = train_head(Xtr, fit.labels, steps=args.steps, batch=args.batch, lr=args.lr,
                                        seed=args.seed, plan=None if args.full else plan)
        curves["head only"] = {"loss": losses}
        with torch.no_grad():
            row("head only", _acc(head(Xte).argmax(1).numpy(), test.labels), Xtr.shape[1] * 2 + 2,
                (Xtr.shape[1] * 2 + 2) * 4, secs + t_embed, f"AdamW lr {args.lr}")

    def run_tuning(label: str, make, centre: float, step_no: str):
        _step(f"{step_no} {label}: learning rate by {schedule.name} on the validation split "
              f"({schedule.total_steps()} steps in all, full budget {args.steps} steps, AdamW)")

        def evaluate(trial, last: bool) -> float:
            texts = val.texts if last or schedule.halving else curve_texts
            return _acc(logits_of(trial.model, tok, texts).argmax(1).numpy(), val.labels[: len(texts)])

        def start(lr: float):
            return Trial(make(), tok, fit.texts, fit.labels, plan, lr=lr, steps=args.steps)
        with clock(f"tuning {label}"), Progress(schedule.total_steps(), f"{label} tuning") as bar:
            best, trials, record = tune(lr_grid(centre, args.tune), schedule, start, evaluate, bar)
        tuning[label] = record
        chosen = f"validation accuracy {best.score:.4f} at step {best.curve[-1][0]}" if best.curve else "no choice"
        print(f"      {label}: chosen learning rate {best.lr:.3g} ({chosen}, {best.run.seconds:.0f} s of training)")
        if record["chosen_on_edge"]:  # said, not hidden: one widening step was not enough (results.json too)
            print(f"      note: {best.lr:.3g} is on the edge of the rates tried; the grid's centre is set with "
                  f"{'--lr' if label.startswith('VeRA') else '--lora-lr'}")
        return best, trials

    best_vera, vera_trials = run_tuning(vera_label, new_vera, args.lr, "3/8")
    curves[vera_label] = {"loss": best_vera.run.losses, "validation": best_vera.curve}
    n_vera = sum(p.numel() for p in best_vera.run.model.parameters() if p.requires_grad)
    adapter_path = out / "vera_adapter.safetensors"
    trial_paths = []
    with clock("test accuracies"):
        for i, t in enumerate(vera_trials):  # every trained VeRA adapter is kept (a few KB each) and served below
            path = adapter_path if t is best_vera else out / f"vera_adapter_lr{i + 1}.safetensors"
            t.run.model.save_adapter(path, packed=True, vector_dtype=args.vector_dtype,
                                     base_model_name="sentence-transformers/all-MiniLM-L6-v2",
                                     provenance={"task": "rotten tomatoes fresh vs rotten", "steps": t.run.step,
                                                 "lr": t.lr})
            trial_paths.append(path)
        del vera_trials, best_vera.run.model
        # the shipped adapter as a user loads it: stored vectors held in float32 (exact), float32 math
        vera = VeraModel.from_adapter(classifier(), adapter_path, vector_dtype="float32").eval()
        vera_logits = logits_of(vera, tok, test.texts, desc="VeRA test")
    n_tried = len(tuning[vera_label]["trials"])
    row(f"VeRA r={args.r} + head (ours)", _acc(vera_logits.argmax(1).numpy(), test.labels), n_vera,
        adapter_path.stat().st_size, best_vera.run.seconds,
        f"AdamW lr {best_vera.lr:.3g} ({schedule.name} over {n_tried} rates, on validation); the shipped file: "
        f"{args.vector_dtype} vectors + float32 head, A and B from the seed; accuracy of that file")

    best_lora, lora_trials = run_tuning(lora_label, new_lora, args.lora_lr, "4/8")
    curves[lora_label] = {"loss": best_lora.run.losses, "validation": best_lora.curve}
    lora = best_lora.run.model
    del lora_trials
    with clock("test accuracies"):
        lora_logits = logits_of(lora, tok, test.texts, desc="LoRA test")
        lora.save_pretrained(scratch / "lora_adapter")
        _copy_tree(scratch / "lora_adapter", out / "lora_adapter")
    row("LoRA r=8 + head (PEFT)", _acc(lora_logits.argmax(1).numpy(), test.labels),
        sum(p.numel() for p in lora.parameters() if p.requires_grad), _file_bytes(out / "lora_adapter"),
        best_lora.run.seconds, f"AdamW lr {best_lora.lr:.3g} ({schedule.name} over "
        f"{len(tuning[lora_label]['trials'])} rates, on validation), alpha 16")
    del best_lora, lora

    _step("5/8 reload the VeRA adapter in a fresh process: logits must be bit-identical")
    with clock("reload in a fresh process"):
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
    with clock("ONNX export and checks"):
        import onnxruntime as ort

        from vera_onnx import VeraOnnxSession, export
        ids, mask = tok(test.texts[:64])
        export(vera, (ids, mask), onnx_dir / "vera_merged.onnx", input_names=["input_ids", "attention_mask"],
               output_names=["logits"])
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = args.threads
        sess = ort.InferenceSession(str(onnx_dir / "vera_merged.onnx"), so, providers=["CPUExecutionProvider"])
        ort_logits = []
        with Progress(len(test.texts), "ONNX Runtime test", unit="text") as bar:
            for i in range(0, len(test.texts), 64):
                a, b = tok(test.texts[i: i + 64])
                ort_logits.append(sess.run(None, {"input_ids": a.numpy(), "attention_mask": b.numpy()})[0])
                bar.update(len(a))
        ort_logits = np.concatenate(ort_logits)
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

    _step("8/8 results: table, JSON and the picture")
    with clock("results: table, JSON and the picture"):
        curve_label = (f"validation accuracy ({CURVE_SNIPPETS} snippets; last point all {len(val.texts)})"
                       if args.full else f"validation accuracy ({len(val.texts)} snippets, at the rungs)")
        plot(rows, curves, out / "results.png", curve_label)
        md = ["| method | test accuracy | trainable params | adapter bytes | wall s |", "|---|---|---|---|---|"]
        md += [f"| {r['method']} | {r['test_accuracy']:.4f} | {r['trainable_params']:,} | {r['adapter_bytes']:,} | "
               f"{r['wall_seconds']} |" for r in rows]
        _write(out / "results.md", "\n".join(md) + "\n")
    total, total_cpu = clock.total()
    results = {
        "model": "all-MiniLM-L6-v2" if not args.model_dir else args.model_dir,
        "data": "Rotten Tomatoes snippets (Pang & Lee 2004), fresh vs rotten, split by movie",
        "train": len(fit.texts), "validation": len(val.texts), "test": len(test.texts), "steps": args.steps,
        "batch": args.batch, "r": args.r, "targets": targets, "protocol": "full grid" if args.full else
        "successive halving", "rows": rows, "tuning": tuning,
        "curves": {k: {"validation": v.get("validation", []), "loss": [round(float(x), 5) for x in v["loss"]]}
                   for k, v in curves.items()},  # enough to redraw results.png
        "ship": {"reload_bit_identical": bit_identical, "onnx_merged_max_abs_diff": ort_diff,
                 "onnx_merged_same_prediction": ort_agree, "onnx_multi_mixed_batch_max_abs_diff": mixed,
                 "onnx_multi_no_adapter_vs_base_max_abs_diff": base_diff,
                 "onnx_models_kept": bool(args.keep_models)},
        "estimated_seconds": round(estimate, 1), "total_seconds": round(total, 1),
        "cpu_seconds": round(total_cpu, 1), "threads": args.threads,
        "estimate_parts_seconds": {k: round(v, 1) for k, v in parts.items()},
        "profile": {k: {kk: round(vv, 2) for kk, vv in v.items()} for k, v in clock.phases.items()},
        "measured_at_start": {"imports_s": round(imports_s, 2), "load_s": round(load_s, 2),
                              "step_s_and_s_per_token": {k: [round(v[0], 4), float(f"{v[1]:.4g}")]
                                                         for k, v in step_cost.items()},
                              "eval_s_per_token": {k: float(f"{v:.4g}") for k, v in eval_cost.items()}},
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "torch": torch.__version__,
    }
    _write(out / "results.json", json.dumps(results, indent=1))
    if not args.keep_models:
        shutil.rmtree(onnx_dir, ignore_errors=True)
    shutil.rmtree(scratch, ignore_errors=True)
    _step(f"done in {total:.0f} s (estimated {estimate:.0f} s, {100 * (estimate / total - 1):+.0f}%; {total_cpu:.0f} "
          f"CPU-seconds); table in {out / 'results.md'}, picture in {out / 'results.png'}")
    print("\n".join(md))
    return results


def main(argv=None) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
