"""VeRA training step, memory, merge, switch and file size: ours vs PEFT, side by side in one run.

    python bench/torch_layer.py [--layers 4] [--steps 5] [--threads 2] [--only train|merge|paths]

Model: a RoBERTa-base-shaped encoder (hidden 768, 12 heads, FFN 3072) built from its
config with random weights (no download), --layers layers, VeRA on query/value,
batch 8 x 128, loss = sum of the last hidden state, backward through the encoder
(inputs_embeds require grad, so the floor is a real frozen-model backward).

Rows: the floor (no adapter), PEFT LoRA r=8, PEFT VeRA and ours at r=256 and 1024, ours both
with the default ``save_for_backward="minimal"`` (keeps h or x only, forms the merged weight / v
again in backward) and with ``"activations"`` (keeps them: issue 25). Our path is chosen by
multiply-adds (vera_torch.functional.path_costs): at r=256 the fused path keeping h, at r=1024 the
fused path keeping x.
"cost" = median over rounds of (step time - the floor's time in the same round);
every round runs each model once, so drift of the machine's speed cancels. "saved MB" = the unique
storages autograd keeps for backward beyond the floor's (vera_torch.functional.saved_tensor_bytes:
torch.autograd.graph.saved_tensors_hooks, parameters, buffers and projections not counted; the
memory tests count with the same function; CPU has no allocator peak counter).
Targets: our cost <= 0.6x PEFT's at r=1024 and <= PEFT's at r=256; our saved MB <= PEFT LoRA r=8's;
a RoBERTa-large-shaped q/v r=256 float32 adapter <= 250,000 bytes (PEFT: 2,356,488).

Paths (``--only paths``): one RoBERTa-base-shaped q/v pair at 128 and 1024 rows, each of our three
paths forced (factored, fused keeping x, fused keeping h) against PEFT VeRA, the one the cost model
picks (vera_torch.functional.choose_path) marked.

Merged serving (issue 25): a RoBERTa-base-shaped model (12 layers, vocabulary 50265), q/v r=256,
in float32, bfloat16 and float16, merged with vectors scaled so that mean |Delta W| / mean |W0| is
0 (a new adapter), 1e-4, 1e-3, 1e-2, 1e-1 and 1: the tensor bytes it holds (parameters, buffers,
projections, what merge keeps to restore W0) against the base model's in the same dtype; target: at
most 1% more, unmerge bit for bit. Bytes only (deterministic); no timing.
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

import torch

sys.path[:0] = [os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", d) for d in ("", "backends")]
from vera_torch import VeraConfig, get_vera_model  # noqa: E402
from vera_torch.functional import saved_tensor_bytes  # noqa: E402
from vera_torch.layer import resident_tensors  # noqa: E402

warnings.filterwarnings("ignore")


def roberta(layers: int, hidden: int = 768, heads: int = 12, ffn: int = 3072):
    from transformers import RobertaConfig, RobertaModel
    torch.manual_seed(0)
    cfg = RobertaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=ffn, vocab_size=1000, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    return RobertaModel(cfg).train()


def make_step(model, emb, mask):
    def fwd():
        return model(inputs_embeds=emb, attention_mask=mask).last_hidden_state.sum()

    def step() -> float:
        emb.grad = None
        model.zero_grad(set_to_none=True)
        t = time.perf_counter()
        fwd().backward()
        return time.perf_counter() - t

    fwd().backward()  # warm-up (makes our projections, which are then resident)
    nbytes, loss = saved_tensor_bytes(fwd, resident_tensors(model) + [emb])
    loss.backward()
    return step, nbytes


def interleaved(steps: list, rounds: int) -> list[list[float]]:
    """The seconds of each step, ``rounds`` times, every step once per round (so drift of the machine's
    speed hits every model alike)."""
    times = [[] for _ in steps]
    for _ in range(rounds):
        for i, step in enumerate(steps):
            times[i].append(step())
    return times


def cost(ts: list[float], floor: list[float]) -> float:
    """Median over rounds of (a step's time - the floor's time in the same round)."""
    return statistics.median(t - f for t, f in zip(ts, floor))


def peft_model(base, kind: str, r: int):
    import peft
    cfg = (peft.LoraConfig(r=r, target_modules=["query", "value"]) if kind == "lora"
           else peft.VeraConfig(r=r, target_modules=["query", "value"]))
    return peft.get_peft_model(copy.deepcopy(base), cfg)


def file_bytes(save) -> int:
    with tempfile.TemporaryDirectory() as d:
        save(d)
        return sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(d) for f in fs
                   if f.endswith(".safetensors"))


def tensor_bytes(model) -> int:
    """Unique storages of every tensor the model holds: parameters, buffers, our projections and
    what our merged layers keep to restore W0 (a residual, a CPU copy, the vectors as merged)."""
    from vera_torch.layer import VeraLayer
    ts = resident_tensors(model)
    for m in model.modules():
        if isinstance(m, VeraLayer) and m._restore is not None:
            rec = m._restore
            ts += [rec["w0"]] if "w0" in rec else []
            ts += rec["residual"].tensors() if rec.get("residual") is not None else []
            ts += [t for pair in rec.get("vectors", {}).values() for t in pair]
    return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in ts}.values())


def merged_bytes(dtypes: tuple[str, ...] = ("float32", "bfloat16", "float16")) -> None:
    from vera_torch.restore import subtract
    base = roberta(12)
    base.embeddings.word_embeddings = torch.nn.Embedding(50265, 768)
    for p in base.parameters():
        p.requires_grad_(False)
    nb32 = tensor_bytes(base)
    n_params = sum(p.numel() for p in base.parameters())
    ov = get_vera_model(base, VeraConfig(r=256, target_modules=["query", "value"], seed=0))
    layers = list(ov.vera_layers())
    print("# merged RoBERTa-base-shaped model, q/v r=256 (issue 25: merged bytes <= base + 1%, unmerge bit for bit)")
    print(f"{'dtype':>9} {'mean|dW|/mean|W0|':>18} {'base MiB':>9} {'merged MiB':>11} {'overhead':>9} "
          f"{'residual MiB':>13} {'copies':>7} {'misses':>8} {'unmerge':>8}")
    for dname in dtypes:
        dtype = getattr(torch, dname)
        ov.to(dtype)
        nb = nb32 - n_params * 4 + n_params * dtype.itemsize  # the base model's tensors in this dtype
        w0 = {n: p.detach().clone() for n, p in ov.base_model.named_parameters() if "vera_lambda" not in n}
        g = torch.Generator().manual_seed(1)
        for rel in (0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0):
            with torch.no_grad():
                for layer in layers:
                    lb = layer.vera_lambda_b["default"]
                    lb.copy_(torch.randn(lb.shape, generator=g))
                    layer.vera_lambda_d["default"].copy_(torch.randn(256, generator=g))
                    if rel == 0.0:
                        lb.zero_()
                    else:
                        scale = rel * layer.weight.double().abs().mean() / layer.delta_weight("default").abs().mean()
                        lb.mul_(scale.to(lb.dtype))
            ov.merge()
            mb = tensor_bytes(ov)
            copies = sum(layer.vera_w0 is not None for layer in layers)
            resid = sum(layer._restore["residual"].nbytes for layer in layers if layer._restore is not None)
            miss = 0
            for layer in layers:  # the elements fl(W - Delta W) alone does not bring back
                if layer._restore is not None:
                    dW = layer._delta_sum(layer._restore["vectors"])
                    miss += int((subtract(layer.weight.detach(), dW) != layer.original_weight).sum())
            frac = miss / sum(layer.weight.numel() for layer in layers)
            ov.unmerge()
            bits = {4: torch.int32, 2: torch.int16, 8: torch.int64}[dtype.itemsize]
            exact = all(torch.equal(p.view(bits), w0[n].view(bits))
                        for n, p in ov.base_model.named_parameters() if "vera_lambda" not in n)
            print(f"{dname:>9} {rel:>18g} {nb / 2**20:>9.1f} {mb / 2**20:>11.1f} {100 * (mb / nb - 1):>+8.2f}% "
                  f"{resid / 2**20:>13.2f} {copies:>7} {100 * frac:>7.3f}% {'exact' if exact else 'DIFFERS':>8}")
    ov.to(torch.float32)
    print("merged MiB includes the adapter (vectors in the model's dtype, float32 projections A, B: 1.5 MiB,"
          " the vectors as merged) and the residual that restores W0 (vera_torch/restore.py); misses: elements"
          " that fl(W - Delta W) alone does not bring back; copies: layers that keep a full W0 (out of 24)")


class _Pair(torch.nn.Module):
    """query and value reading one x (what shares h), RoBERTa-base-shaped."""

    def __init__(self, d: int = 768) -> None:
        super().__init__()
        self.query, self.value = torch.nn.Linear(d, d), torch.nn.Linear(d, d)

    def forward(self, x):
        return self.query(x).sum() + self.value(x).sum()


def paths(rounds: int = 30) -> None:
    """Each of our paths forced, and the one path_costs picks, against PEFT VeRA on one q/v pair."""
    import peft
    from vera_torch.functional import choose_path
    print("# one q/v pair 768x768, forward + backward (x requires grad), adapter cost in ms = median over rounds "
          "of (time - the frozen pair's time in the same round); the cost model's pick marked *")
    print(f"{'rows':>5} {'r':>5} {'PEFT VeRA':>10} {'factored':>10} {'fused':>10} {'fused_h':>10}")
    for rows, r in ((128, 8), (128, 256), (1024, 8), (1024, 64), (1024, 256), (1024, 1024)):
        torch.manual_seed(0)
        base = _Pair()
        for p in base.parameters():
            p.requires_grad_(False)
        x = torch.randn(rows, 768, requires_grad=True)
        models = {"floor": base, "peft": peft.get_peft_model(copy.deepcopy(base), peft.VeraConfig(
            r=r, target_modules=["query", "value"], init_weights=False))}
        for key, forced in (("factored", False), ("fused", "x"), ("fused_h", "h")):
            m = get_vera_model(copy.deepcopy(base), VeraConfig(r=r, target_modules=["query", "value"], seed=0))
            with torch.no_grad():
                for layer in m.vera_layers():
                    layer.fused = forced
                    layer.vera_lambda_b["default"].normal_()
            models[key] = m

        def run(m) -> float:
            x.grad = None
            m.zero_grad(set_to_none=True)
            t = time.perf_counter()
            m(x).backward()
            return time.perf_counter() - t

        for m in models.values():
            run(m)
        ts = dict(zip(models, interleaved([lambda m=m: run(m) for m in models.values()], rounds)))
        ms = {k: 1e3 * cost(ts[k], ts["floor"]) for k in models}
        pick = choose_path(rows, r, 768, 768, training=True, minimal=True)
        cells = [f"{ms[k]:>9.2f}{'*' if k == pick else ' '}" for k in ("factored", "fused", "fused_h")]
        print(f"{rows:>5} {r:>5} {ms['peft']:>10.2f} " + " ".join(cells))


def timed(fn, repeat: int = 3) -> float:
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", choices=("train", "merge", "paths"), default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.only in (None, "paths"):
        paths()
        if args.only == "paths":
            return 0
    if args.only != "train":
        merged_bytes()
        if args.only == "merge":
            return 0
    base = roberta(args.layers)
    for p in base.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(8, 128, 768, generator=g).requires_grad_(True)
    mask = torch.ones(8, 128, dtype=torch.long)
    import peft
    print(f"# RoBERTa-base-shaped encoder, {args.layers} layers, query/value, batch 8x128, torch "
          f"{torch.__version__}, peft {peft.__version__}, {args.threads} threads, median of {args.steps} steps")
    models = [("floor: frozen model, no adapter", base, None, None, None)]
    pl = peft_model(base, "lora", 8)
    models.append(("PEFT LoRA r=8", pl, lambda: (pl.merge_adapter(), pl.unmerge_adapter()), None,
                   lambda d: pl.save_pretrained(d)))
    for r in (256, 1024):
        pv = peft_model(base, "vera", r)
        pv.add_adapter("other", peft.VeraConfig(r=r, target_modules=["query", "value"]))
        pv.set_adapter("default")
        models.append((f"PEFT VeRA r={r}", pv, lambda pv=pv: (pv.merge_adapter(), pv.unmerge_adapter()),
                       lambda pv=pv: (pv.set_adapter("other"), pv.set_adapter("default")),
                       lambda d, pv=pv: pv.save_pretrained(d, selected_adapters=["default"])))
        ov = get_vera_model(copy.deepcopy(base), VeraConfig(r=r, target_modules=["query", "value"], seed=0))
        ov.add_adapter("other", VeraConfig(r=r, target_modules=["query", "value"], seed=1))
        ov.set_adapter("default")
        oa = copy.deepcopy(ov)
        for layer in oa.vera_layers():
            layer.save_for_backward = "activations"
        models.append((f"ours, activations r={r}", oa, None, None, None))
        models.append((f"ours (vera_torch) r={r}", ov, lambda ov=ov: (ov.merge(), ov.unmerge()),
                       lambda ov=ov: (ov.set_adapter("other"), ov.set_adapter("default")),
                       lambda d, ov=ov: ov.save_adapter(os.path.join(d, "a.safetensors"))))
    steps = [make_step(m, emb, mask) for _, m, *_ in models]
    times = interleaved([step for step, _ in steps], args.steps)
    rows, costs = [], {}
    floor_bytes = steps[0][1]
    for (name, _, merge_fn, switch_fn, save_fn), (_, nbytes), ts in zip(models, steps, times):
        nbytes -= floor_bytes
        c = cost(ts, times[0])  # paired with the floor's round
        rows.append((name, statistics.median(ts), c, nbytes if name != models[0][0] else floor_bytes, merge_fn and timed(merge_fn),
                     switch_fn and timed(switch_fn), save_fn and file_bytes(save_fn)))
        for who in ("PEFT VeRA", "ours (", "PEFT LoRA"):
            if name.startswith(who):
                costs[(who, int(name.rpartition("=")[2]))] = (c, nbytes)
    print(f"{'':34} {'step s':>8} {'cost s':>8} {'saved MB':>9} {'merge+unmerge s':>16} {'switch x2 s':>12} "
          f"{'file bytes':>12}")
    for name, t, c, b, mg, sw, fb in rows:
        f = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
        print(f"{name:34} {t:>8.3f} {c:>8.3f} {b / 2**20:>9.1f} {f(mg, '>16.3f')} {f(sw, '>12.5f')} "
              f"{f(fb, '>12,')}")
    print(f"saved MB: beyond the floor's, whose own row shows what the frozen model keeps")
    lora_bytes = costs[("PEFT LoRA", 8)][1]
    for r, limit in ((1024, 0.6), (256, 1.0)):
        (ours, ob), (peft_cost, _) = costs[("ours (", r)], costs[("PEFT VeRA", r)]
        ratio = ours / peft_cost if peft_cost > 0 else float("nan")
        print(f"r={r}: our cost / PEFT VeRA's cost = {ratio:.2f} (target <= {limit}): "
              f"{'met' if ratio <= limit else 'NOT met'}; saved MB over the floor {ob / 2**20:.1f} vs PEFT LoRA "
              f"r=8's {lora_bytes / 2**20:.1f}: {'met' if ob <= lora_bytes else 'NOT met'}")
    # adapter bytes of a RoBERTa-large-shaped q/v r=256 adapter (FFN kept small: it is not adapted)
    large = roberta(24, hidden=1024, heads=16, ffn=64)
    ours = get_vera_model(large, VeraConfig(r=256, target_modules=["query", "value"], seed=0))
    per_module = file_bytes(lambda d: ours.save_adapter(os.path.join(d, "a.safetensors")))
    nb = file_bytes(lambda d: ours.save_adapter(os.path.join(d, "a.safetensors"), packed=True))
    print(f"RoBERTa-large-shaped q/v r=256 float32 adapter file: {nb:,} bytes packed, {per_module:,} per-module "
          f"({256 * 48 * 4 + 1024 * 48 * 4:,} of them vectors); PEFT's default file: 2,356,488 bytes; "
          f"target <= 250,000: {'met' if nb <= 250_000 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
