"""Many VeRA adapters in one batch, side by side in one run: torch and ONNX Runtime against their anchors.

    python bench/many_adapters.py [--layers 2] [--batch 512] [--seq 4] [--repeats 5] [--ks 1,8,64,512] [--quick]

Model: a RoBERTa-base-shaped encoder (hidden 768, 12 heads, FFN 3072; --layers of its 12) from its
config with random weights (no download), VeRA r=256 on query and value, one seed: every adapter
shares A and B, so a batch whose rows use K different adapters costs one x A^T and one B^T product
per layer whatever K is (README "Many adapters in one batch"). The batch has --batch rows (K <= batch;
row i uses adapter i mod K) of --seq tokens.

Rows, one per K, all interleaved round by round (median of --repeats):
  torch  ours one adapter    VeraModel, set_adapter (the anchor: what one adapter costs)
         ours mixed K        VeraModel(..., adapter_ids=...) with K distinct adapters
         PEFT LoRA mixed K   PEFT LoRA r=8 with its own mixed-batch path (adapter_names=...)
  ORT    merged              one adapter folded into the weights (the anchor)
         multi mixed K       export(mode="multi", capacity=max K) served by VeraOnnxSession(adapter_ids=...)
Memory per added adapter: the bytes one more adapter adds (its vectors; ORT: one row of every table;
LoRA: its A and B), and the resident-set growth measured while adding them to the torch models.
Targets (issue 13): mixed K=64 <= 1.15x and K=512 <= 1.3x the one-adapter anchor, torch and ORT;
ours faster than PEFT's mixed LoRA at K >= 8.
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
from vera_torch import VeraConfig, get_vera_model  # noqa: E402

warnings.filterwarnings("ignore")
R, TARGETS = 256, ["query", "value"]


class Encoder(torch.nn.Module):
    """input_ids -> last hidden state (one input, one output)."""

    def __init__(self, layers: int) -> None:
        super().__init__()
        from transformers import RobertaConfig, RobertaModel
        torch.manual_seed(0)
        self.roberta = RobertaModel(RobertaConfig(num_hidden_layers=layers, vocab_size=1000, hidden_dropout_prob=0.0,
                                                  attention_probs_dropout_prob=0.0)).eval()

    def forward(self, input_ids):
        return self.roberta(input_ids=input_ids).last_hidden_state


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _randomise(model: torch.nn.Module, key: str, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if key in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--seq", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ks", default="1,8,64,512")
    ap.add_argument("--quick", action="store_true", help="1 layer, batch 64, K up to 64, 3 repeats (a smoke run)")
    args = ap.parse_args()
    if args.quick:
        args.layers, args.batch, args.seq, args.repeats, args.ks = 1, 64, 8, 3, "1,8,64"
    ks = [int(k) for k in args.ks.split(",")]
    if max(ks) > args.batch:
        ap.error(f"K={max(ks)} needs a batch of at least that many rows (--batch {args.batch})")
    kmax = max(ks)
    t_start = time.perf_counter()
    base = Encoder(args.layers)
    ids = torch.randint(0, 1000, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    names = [f"a{i}" for i in range(kmax)]

    # ours: kmax adapters of one (generator, seed, r)
    vm = get_vera_model(copy.deepcopy(base), VeraConfig(r=R, target_modules=TARGETS, seed=0), names[0])
    rss0 = _rss()
    for n in names[1:]:
        vm.add_adapter(n, VeraConfig(r=R, target_modules=TARGETS, seed=0))
    _randomise(vm, "vera_lambda", 1)
    vm.eval()
    ours_rss = (_rss() - rss0) / max(1, kmax - 1)
    ours_bytes = sum(p.numel() * p.element_size() for n, p in vm.named_parameters() if n.endswith("." + names[0]))

    # PEFT LoRA r=8 on the same modules, kmax adapters with random (non-zero) B
    import peft
    lora_cfg = dict(r=8, lora_alpha=16, target_modules=TARGETS, lora_dropout=0.0)
    pm = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(**lora_cfg), adapter_name=names[0])
    rss0 = _rss()
    for n in names[1:]:
        pm.add_adapter(n, peft.LoraConfig(**lora_cfg))
    _randomise(pm, "lora_", 2)
    pm.eval()
    lora_rss = (_rss() - rss0) / max(1, kmax - 1)
    lora_bytes = sum(p.numel() * p.element_size() for n, p in pm.named_parameters()
                     if n.endswith("." + names[0] + ".weight"))

    # ORT: merged single adapter, and one multi model of capacity kmax holding every adapter
    d = tempfile.mkdtemp(prefix="vera-many-")
    vm.set_adapter(names[0])
    export(vm, {"input_ids": ids[:2]}, os.path.join(d, "merged.onnx"), mode="merged")
    export(vm, {"input_ids": ids[:2]}, os.path.join(d, "multi.onnx"), mode="multi", capacity=kmax)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    merged = ort.InferenceSession(os.path.join(d, "merged.onnx"), so, providers=["CPUExecutionProvider"])
    multi = VeraOnnxSession(os.path.join(d, "multi.onnx"))
    for n in names:
        multi.load_adapter(n, vm.to_adapter(n, fingerprint=False))
    ort_bytes = sum(t.nbytes for t in multi._tables.values()) // (kmax + 1)
    feeds = {"input_ids": ids.numpy()}
    setup_s = time.perf_counter() - t_start

    def rows(k: int) -> list[str]:
        return [names[i % k] for i in range(args.batch)]

    runs = {"torch ours one adapter": lambda: vm(ids), "ORT merged": lambda: merged.run(None, feeds)}
    for k in ks:
        runs[f"torch ours mixed K={k}"] = lambda k=k: vm(ids, adapter_ids=rows(k))
        runs[f"torch PEFT LoRA mixed K={k}"] = lambda k=k: pm(input_ids=ids, adapter_names=rows(k))
        runs[f"ORT multi mixed K={k}"] = lambda k=k: multi.run(None, feeds, adapter_ids=rows(k))
    # correctness, once: ORT multi against torch on the largest mix; mixed rows against each row alone
    with torch.no_grad():
        vm.set_adapter(names[0])
        t_mixed = vm(ids, adapter_ids=rows(kmax))
        o_mixed = multi.run(None, feeds, adapter_ids=rows(kmax))[0]
        last = args.batch - 1
        vm.set_adapter(rows(kmax)[last])
        alone = vm(ids[last:]).numpy()
        vm.set_adapter(names[0])
    times = {k: [] for k in runs}
    with torch.no_grad():
        for f in runs.values():
            f()  # warm-up
        for _ in range(args.repeats):
            for k, f in runs.items():
                t = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}

    print(f"# torch {torch.__version__} CPU ({torch.get_num_threads()} threads), ONNX Runtime {ort.__version__} CPU; "
          f"RoBERTa-base-shaped encoder, {args.layers} of 12 layers; batch {args.batch} rows x {args.seq} tokens; "
          f"VeRA r={R} on query+value (one seed); LoRA r=8 on the same; median of {args.repeats} interleaved calls")
    anchor_t, anchor_o = med["torch ours one adapter"], med["ORT merged"]
    one_ids = med[f"torch ours mixed K={ks[0]}"] if ks[0] == 1 else None
    print(f"{'K':>4} | {'ours one':>9} {'ours mixed':>10} {'x one':>6} {'x K=1':>6} | {'PEFT mixed':>10} "
          f"{'PEFT/ours':>9} | {'ORT merged':>10} {'ORT multi':>9} {'x merged':>8}   (ms)")
    for k in ks:
        om, pl, mm = med[f"torch ours mixed K={k}"], med[f"torch PEFT LoRA mixed K={k}"], med[f"ORT multi mixed K={k}"]
        x1 = f"{om / one_ids:>6.2f}" if one_ids else f"{'-':>6}"
        print(f"{k:>4} | {anchor_t * 1e3:>9.1f} {om * 1e3:>10.1f} {om / anchor_t:>6.2f} {x1} | {pl * 1e3:>10.1f} "
              f"{pl / om:>9.2f} | {anchor_o * 1e3:>10.1f} {mm * 1e3:>9.1f} {mm / anchor_o:>8.2f}")
    print("ours one: set_adapter, every row; x K=1: against adapter_ids with one adapter on every row")
    print(f"memory per added adapter: ours {ours_bytes:,} B of vectors (RSS growth {ours_rss:,.0f} B), "
          f"ORT multi {ort_bytes:,} B per table slot, PEFT LoRA r=8 {lora_bytes:,} B (RSS growth {lora_rss:,.0f} B)")
    print(f"check: ORT multi vs torch mixed (K={kmax}) max |diff| {np.abs(o_mixed - t_mixed.numpy()).max():.2e}; "
          f"last row mixed vs alone max |diff| {np.abs(t_mixed[last:].numpy() - alone).max():.2e}; "
          f"setup {setup_s:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
