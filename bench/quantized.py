"""VeRA on a 4-bit base (QLoRA-style): frozen-base memory, training step time, merge error; ours vs PEFT.

    python bench/quantized.py [--layers 2] [--steps 5] [--threads 2] [--batch 2] [--seq 64]

Models, built from their configs with random weights (no download), --layers layers each:
a RoBERTa-base-shaped encoder (hidden 768, FFN 3072, VeRA on query/value) and a Llama-shaped
decoder (TinyLlama-1.1B's block: hidden 2048, FFN 5632, 32 heads, 4 KV heads; every linear
layer of the blocks adapted, as QLoRA does). 4-bit: every nn.Linear of the blocks replaced by
bitsandbytes Linear4bit nf4 with double quantization and bfloat16 compute (QLoRA's recipe),
embeddings and norms left in float32.

Rows, in one run and one process: fp32 base + our VeRA, 4-bit base + our VeRA, 4-bit base +
PEFT VeRA, 4-bit base + PEFT LoRA r=8 (VeRA r=256). "base MB": every tensor of the frozen base
(parameters, buffers, and bitsandbytes' quantization state: absmax, codes, nested statistics),
trainable parameters and projections not counted. "step ms": median over --steps rounds (after
one warm-up step each) of forward + backward of sum(last hidden state) + AdamW step, batch
--batch x --seq; every round runs each row once, so drift of a shared machine's speed cancels.

Merge error (ours, 4-bit base, after the training steps with the vectors scaled up so the
adapter moves the output): the largest change of the model's output against the unmerged
adapter model, for a merge into the 4-bit weights (requantized, spec 7.5) and for the
full-precision merge (merge_and_unload(dtype=torch.float32), spec 7.6), next to the largest
change the adapter itself makes (unmerged vs adapter disabled).
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import sys
import time
import warnings

import torch
from torch import nn

sys.path[:0] = [os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", d) for d in ("", "backends")]
from vera_torch import VeraConfig, get_vera_model  # noqa: E402

warnings.filterwarnings("ignore")
R = 256


def roberta(layers: int):
    from transformers import RobertaConfig, RobertaModel
    torch.manual_seed(0)
    cfg = RobertaConfig(hidden_size=768, num_attention_heads=12, intermediate_size=3072, num_hidden_layers=layers,
                        vocab_size=1000, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return RobertaModel(cfg, add_pooling_layer=False).eval(), ["query", "value"]


def llama(layers: int):
    from transformers import LlamaConfig, LlamaModel
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_attention_heads=32, num_key_value_heads=4,
                      num_hidden_layers=layers, vocab_size=1000)
    return LlamaModel(cfg).eval(), ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def to_4bit(model: nn.Module) -> nn.Module:
    """Every nn.Linear inside the blocks -> bitsandbytes Linear4bit nf4, double quantization, bf16 compute."""
    import bitsandbytes as bnb
    model = copy.deepcopy(model)
    for path, m in list(model.named_modules()):
        if type(m) is nn.Linear and "layer" in path:
            q = bnb.nn.Linear4bit(m.in_features, m.out_features, bias=m.bias is not None,
                                  compute_dtype=torch.bfloat16, compress_statistics=True, quant_type="nf4")
            q.load_state_dict(m.state_dict())
            q = q.to("cpu")
            q.support_avx512bf16_for_cpu = False  # keep the canonical layout (spec 7.2) for every row alike
            parent, _, child = path.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, q)
    return model


def base_bytes(model: nn.Module) -> int:
    """Bytes of every frozen tensor of the base: parameters, buffers, bitsandbytes' quantization state."""
    seen, total = set(), 0

    def add(t):
        nonlocal total
        if t is None or not isinstance(t, torch.Tensor) or t.requires_grad:
            return
        key = (t.untyped_storage().data_ptr(), t.dtype, tuple(t.shape))
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()

    for name, m in model.named_modules():
        if any(k in name for k in ("vera_", "lora_", "projections")):
            continue
        for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)):
            add(t)
            qs = getattr(t, "quant_state", None)
            if qs is not None:
                for u in (qs.absmax, qs.code, getattr(qs, "offset", None)):
                    add(u)
                if qs.state2 is not None:
                    add(qs.state2.absmax)
                    add(qs.state2.code)
    return total


def ours(base, targets):
    return get_vera_model(base, VeraConfig(r=R, target_modules=targets, seed=0))


def peft_vera(base, targets):
    import peft
    return peft.get_peft_model(base, peft.VeraConfig(r=R, target_modules=targets, projection_prng_key=0))


def peft_lora(base, targets):
    import peft
    return peft.get_peft_model(base, peft.LoraConfig(r=8, target_modules=targets, lora_dropout=0.0))


def stepper(model, ids):
    """One training step of ``model`` per call; returns its seconds."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def step() -> float:
        t0 = time.perf_counter()
        loss = model(input_ids=ids).last_hidden_state.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.perf_counter() - t0
    return step


def step_ms(models: list, ids, steps: int) -> list[float]:
    """Median step time of each model: one warm-up step each, then ``steps`` rounds that run every
    model once (so a change of the shared machine's speed hits every row alike)."""
    steps_of = [stepper(m, ids) for m in models]
    for s in steps_of:
        s()
    times = [[] for _ in models]
    for _ in range(steps):
        for t, s in zip(times, steps_of):
            t.append(s())
    return [statistics.median(t) * 1e3 for t in times]


def trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def merge_errors(model, ids) -> dict:
    """Ours on the 4-bit base: output change of the 4-bit merge and of the full-precision merge."""
    for layer in model.vera_layers():  # an adapter that moves the output (trained vectors are still tiny)
        g = torch.Generator().manual_seed(1)
        layer.vera_lambda_b["default"].copy_(torch.randn(layer.out_features, generator=g) * 0.1)
    y = model(input_ids=ids).last_hidden_state
    with model.disable_adapter():
        y_base = model(input_ids=ids).last_hidden_state
    full = copy.deepcopy(model).merge_and_unload(dtype=torch.float32)(input_ids=ids).last_hidden_state
    model.merge(max_output_change=math.inf)
    y4 = model(input_ids=ids).last_hidden_state
    worst_layer = max(r["max_output_change"] / max(r["adapter_max"], 1e-30)
                      for r in __import__("vera_torch.quantized", fromlist=["x"]).merge_reports(model).values())
    model.unmerge()
    return {"adapter": float((y - y_base).abs().max()), "merged 4-bit": float((y4 - y).abs().max()),
            "merged fp32": float((full - y).abs().max()), "layer change / adapter (worst)": worst_layer}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=64)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    import bitsandbytes
    import peft
    print(f"torch {torch.__version__}, bitsandbytes {bitsandbytes.__version__}, peft {peft.__version__}, "
          f"{a.threads} threads, {a.layers} layers, batch {a.batch} x {a.seq}, {a.steps} rounds (median)")
    print(f"| model | setup | base MB | trainable | step ms |\n|---|---|---:|---:|---:|")
    errors = {}
    for mname, make in (("RoBERTa-base-shaped", roberta), ("Llama-shaped (TinyLlama block)", llama)):
        fp32, targets = make(a.layers)
        q4 = to_4bit(fp32)
        ids = torch.randint(0, 1000, (a.batch, a.seq), generator=torch.Generator().manual_seed(0))
        rows = [("fp32 base + VeRA (ours)", lambda: ours(copy.deepcopy(fp32), targets)),
                ("4-bit base + VeRA (ours)", lambda: ours(copy.deepcopy(q4), targets)),
                ("4-bit base + PEFT VeRA", lambda: peft_vera(copy.deepcopy(q4), targets)),
                ("4-bit base + PEFT LoRA r=8", lambda: peft_lora(copy.deepcopy(q4), targets))]
        models = [build() for _, build in rows]
        for (label, _), m, ms in zip(rows, models, step_ms(models, ids, a.steps)):
            print(f"| {mname} | {label} | {base_bytes(m) / 2**20:.1f} | {trainable(m):,} | {ms:.0f} |", flush=True)
        errors[mname] = merge_errors(models[1], ids)
        del models
    print("\nmerge error on the 4-bit base (max |output - unmerged output| over the batch's last hidden state):")
    print("| model | adapter's own effect | merged into 4-bit | merged to fp32 | worst layer: change / adapter |")
    print("|---|---:|---:|---:|---:|")
    for mname, e in errors.items():
        print(f"| {mname} | {e['adapter']:.3g} | {e['merged 4-bit']:.3g} | {e['merged fp32']:.3g} | "
              f"{e['layer change / adapter (worst)']:.3g} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
