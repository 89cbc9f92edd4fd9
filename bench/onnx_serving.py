"""ONNX Runtime serving, side by side in one run: base vs merged, hot-swap vs merged, switching.

    python bench/onnx_serving.py [--layers 4] [--calls 30] [--batch 8] [--seq 128]

Model: a RoBERTa-base-shaped encoder (hidden 768, 12 heads, FFN 3072) from its config with
random weights (no download), VeRA r=256 on query/value. Exports: the base model, the
merged model (expected ratio to base about 1.0: the same operators), and the hot-swap
model served by VeraOnnxSession with two adapters. Latency = median of --calls runs,
calls of all sessions interleaved round by round. "switching" alternates the two adapters
on every call; its cost is its latency minus that of one adapter kept active.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
import warnings

import numpy as np
import onnxruntime as ort
import torch

sys.path[:0] = [os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", d) for d in ("", "backends")]
from vera_onnx import VeraOnnxSession, export  # noqa: E402
from vera_onnx.torch_export import _torchscript  # noqa: E402
from vera_torch import VeraConfig, get_vera_model  # noqa: E402

warnings.filterwarnings("ignore")


class Encoder(torch.nn.Module):
    """input_ids -> last hidden state, so the exported graph has one input and one output."""

    def __init__(self, layers: int) -> None:
        super().__init__()
        from transformers import RobertaConfig, RobertaModel
        torch.manual_seed(0)
        self.roberta = RobertaModel(RobertaConfig(num_hidden_layers=layers, vocab_size=1000,
                                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)).eval()

    def forward(self, input_ids):
        return self.roberta(input_ids=input_ids).last_hidden_state


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--calls", type=int, default=30)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    args = ap.parse_args()
    base = Encoder(args.layers)
    ids = torch.randint(0, 1000, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    vm = get_vera_model(copy.deepcopy(base), VeraConfig(r=256, target_modules=["query", "value"], seed=0))
    vm.add_adapter("b", VeraConfig(r=256, target_modules=["query", "value"], seed=0))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in vm.named_parameters():
            if "vera_lambda" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    d = tempfile.mkdtemp(prefix="vera-onnx-bench-")
    p = lambda name: os.path.join(d, name)  # noqa: E731
    _torchscript(base, (ids,), p("base.onnx"), ["input_ids"], ["output"],
                  {"input_ids": {0: "batch", 1: "sequence"}}, fold=True)
    vm.set_adapter("default")
    export(vm, (ids,), p("merged.onnx"), mode="merged", input_names=["input_ids"])
    export(vm, (ids,), p("hot.onnx"), mode="hotswap", input_names=["input_ids"])
    for n in ("default", "b"):
        vm.save_adapter(p(f"{n}.safetensors"), n, fingerprint=False)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sessions = {n: ort.InferenceSession(p(f"{n}.onnx"), so, providers=["CPUExecutionProvider"])
                for n in ("base", "merged")}
    hot = VeraOnnxSession(p("hot.onnx"))
    hot.load_adapter("a", p("default.safetensors"))
    hot.load_adapter("b", p("b.safetensors"))
    feeds = {"input_ids": ids.numpy()}
    state = {"i": 0}

    def alternate():
        state["i"] += 1
        return hot.run(None, feeds, adapter="ab"[state["i"] % 2])

    runs = {
        "base model (no adapter)": lambda: sessions["base"].run(None, feeds),
        "merged model (adapter a folded in)": lambda: sessions["merged"].run(None, feeds),
        "hot-swap, no adapter active": lambda: hot.run(None, feeds),
        "hot-swap, adapter a on every call": lambda: hot.run(None, feeds, adapter="a"),
        "hot-swap, switching a/b every call": alternate,
    }
    merged_out = sessions["merged"].run(None, feeds)[0]
    hot_out = hot.run(None, feeds, adapter="a")[0]
    for f in runs.values():
        f()  # warm-up
    times = {k: [] for k in runs}
    for _ in range(args.calls):
        for k, f in runs.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"# ONNX Runtime {ort.__version__} CPU, RoBERTa-base-shaped encoder, {args.layers} layers, batch "
          f"{args.batch}x{args.seq}, VeRA r=256 q/v, median of {args.calls} interleaved calls")
    print(f"{'':40} {'ms':>9} {'x merged':>9}")
    for k, v in med.items():
        print(f"{k:40} {v * 1e3:>9.2f} {v / med['merged model (adapter a folded in)']:>9.3f}")
    print(f"merged / base = {med['merged model (adapter a folded in)'] / med['base model (no adapter)']:.3f} "
          f"(expected about 1.0); hot-swap a / merged = "
          f"{med['hot-swap, adapter a on every call'] / med['merged model (adapter a folded in)']:.3f}")
    print(f"switching cost per call = {(med['hot-swap, switching a/b every call'] - med['hot-swap, adapter a on every call']) * 1e3:.2f} ms; "
          f"hot-swap a vs merged max |diff| = {np.abs(hot_out - merged_out).max():.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
