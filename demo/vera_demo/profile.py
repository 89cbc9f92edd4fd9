"""Where the demo's time goes: each kind of work it does, timed alone (README, "where the time goes").

    python -m vera_demo.profile [--threads N] [--repeat 10]

Prints one row per kind of work: wall seconds, CPU seconds (user + system, getrusage) and their
ratio, the parallelism the threads reached (on a machine shared with other jobs the wall column
is inflated; the CPU column much less). Rows: tokenizing the training split, one training step of
VeRA and of LoRA on a random batch and on a batch grouped by length, evaluating 100 validation
snippets (base model, VeRA, LoRA), the logistic probe, and one ONNX export plus its ORT session.
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .progress import cpu_seconds


def _timed(fn, repeat: int = 1) -> tuple[float, float]:
    w, c = time.perf_counter(), cpu_seconds()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - w) / repeat, (cpu_seconds() - c) / repeat


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the cores present)")
    ap.add_argument("--repeat", type=int, default=10, help="training steps timed per row (default 10)")
    args = ap.parse_args(argv)
    import peft
    import torch
    from torch import nn
    from vera_torch import VeraConfig, get_vera_model

    from .assets import model_dir
    from .data import load, validation_split
    from .minilm import Classifier, Tokenizer, load_bert
    from .run import _cores
    from .train import batches, grouped_batches, logistic_probe, logits_of, padded_tokens
    threads = args.threads or _cores()
    torch.set_num_threads(threads)
    train, _ = load()
    fit, val = validation_split(train)
    d = model_dir()
    bert, cfg = load_bert(d)
    tok = Tokenizer(d)
    lengths = tok.lengths(fit.texts)
    rows = [("tokenize the training split", f"{len(fit.texts)} texts", *_timed(lambda: tok(fit.texts)))]

    def clf():
        c = Classifier(cfg, bert=copy.deepcopy(bert))
        torch.manual_seed(0)
        c.classifier.reset_parameters()
        return c
    makers = {"VeRA r=256": lambda: get_vera_model(clf(), VeraConfig(r=256, target_modules=["query", "value"], seed=0,
                                                                      modules_to_save=["classifier"])),
              "LoRA r=8": lambda: peft.get_peft_model(clf(), peft.LoraConfig(r=8, lora_alpha=16,
                                                                           target_modules=["query", "value"],
                                                                           modules_to_save=["classifier"]))}
    y = torch.tensor(fit.labels)
    plans = {"random batch": list(batches(len(fit.texts), 16, args.repeat + 1, 0)),
             "grouped batch": grouped_batches(lengths, 16, args.repeat + 1, 0)}
    models = {}
    for name, make in makers.items():
        m = models[name] = make()
        opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
        m.train()
        for kind, plan in plans.items():
            it = iter(plan)

            def step():
                idx = next(it)
                ids, mask = tok([fit.texts[i] for i in idx])
                loss = nn.functional.cross_entropy(m(input_ids=ids, attention_mask=mask), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            step()  # warm-up
            tokens = np.mean([padded_tokens(lengths, idx) for idx in plan[1:]])
            rows.append((f"{name} training step, {kind} of 16", f"{tokens:.0f} padded tokens",
                         *_timed(step, args.repeat)))
    texts = val.texts[:100]
    for name, m in [("base model", clf())] + list(models.items()):
        logits_of(m, tok, texts[:8])
        rows.append((f"evaluate 100 validation snippets, {name}", "batches of 64", *_timed(lambda: logits_of(m, tok, texts))))
    X = torch.randn(len(fit.texts), cfg["hidden_size"])
    rows.append(("logistic probe (L-BFGS) on the embeddings", f"{len(fit.texts)} x {cfg['hidden_size']}",
                 *_timed(lambda: logistic_probe(X, fit.labels))))
    import onnxruntime as ort

    from vera_onnx import export
    ids, mask = tok(val.texts[:64])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"

        def export_and_session():
            export(models["VeRA r=256"].eval(), (ids, mask), path, input_names=["input_ids", "attention_mask"],
                   output_names=["logits"])
            so = ort.SessionOptions()
            so.log_severity_level = 3
            ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        rows.append(("merge, ONNX export and an ORT session", "VeRA model", *_timed(export_and_session)))
    print(f"{threads} threads; wall and CPU seconds per item")
    print("| work | size | wall s | CPU s | CPU / wall |")
    print("|---|---|---|---|---|")
    for what, size, w, c in rows:
        print(f"| {what} | {size} | {w:.3f} | {c:.3f} | {c / max(w, 1e-9):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
