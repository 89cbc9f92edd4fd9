"""Bytes sent per training step and step time under DDP on 2 processes (gloo, CPU): VeRA against PEFT
LoRA r=8 and full finetuning of the same model, in one run.

    python bench/distributed.py [--layers 4] [--width 512] [--r 256] [--batch 8] [--seq 64] [--repeat 7]

Relaunches itself with ``python -m torch.distributed.run --standalone --nproc_per_node 2``. Model:
``--layers`` nn.Linear(width, width) with gelu between, loss = mean of the squared output, each rank
``--batch`` rows of ``--seq`` tokens. Every method trains its trainable tensors with SGD under DDP; a
DDP comm hook counts the bytes of every gradient bucket all-reduced in a step ("sent"), printed beside
the trainable tensors' gradient bytes ("grad bytes"): frozen weights get no gradient and are never
sent; VeRA's A and B are rebuilt on each rank from the seed and are neither parameters nor buffers.
Step time: the median of ``--repeat`` steps, the methods alternating step by step so drift of the
machine's speed falls on all of them alike. ratio = the method's step time / full finetuning's.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--r", type=int, default=256, help="VeRA rank (LoRA stays r=8)")
    ap.add_argument("--batch", type=int, default=8, help="rows per process")
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=7)
    return ap.parse_args(argv)


def launch() -> int:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = os.pathsep.join([os.path.join(HERE, "..", "backends"), os.path.join(HERE, ".."),
                                         env.get("PYTHONPATH", "")])
    return subprocess.call([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                            os.path.abspath(__file__), *sys.argv[1:]], env=env)


def worker(a) -> None:
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel as DDP

    from vera_torch import VeraConfig, get_vera_model

    dist.init_process_group("gloo")
    rank = dist.get_rank()

    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(a.width, a.width) for _ in range(a.layers))

        def forward(self, x):
            for i, layer in enumerate(self.layers):
                x = layer(x) if i == len(self.layers) - 1 else nn.functional.gelu(layer(x))
            return x

    def base():
        torch.manual_seed(0)
        return Stack()

    def full():
        return base()

    def lora():
        from peft import LoraConfig, get_peft_model
        return get_peft_model(base(), LoraConfig(r=8, target_modules=[f"layers.{i}" for i in range(a.layers)]))

    def vera():
        return get_vera_model(base(), VeraConfig(r=a.r, target_modules=[f"layers.{i}" for i in range(a.layers)],
                                                 seed=0))

    sent = {"n": 0}

    def hook(state, bucket):
        buf = bucket.buffer()
        sent["n"] += buf.numel() * buf.element_size()
        fut = dist.all_reduce(buf, async_op=True).get_future()
        return fut.then(lambda f: f.value()[0].div_(dist.get_world_size()))

    methods = {}
    for name, build in [("full finetuning", full), ("PEFT LoRA r=8", lora), (f"VeRA r={a.r}", vera)]:
        m = build()
        w = DDP(m)
        w.register_comm_hook(None, hook)
        trainable = [p for p in w.parameters() if p.requires_grad]
        methods[name] = (w, torch.optim.SGD(trainable, lr=1e-3), sum(p.numel() * p.element_size() for p in trainable))
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(a.batch, a.seq, a.width, generator=g)
    times = {n: [] for n in methods}
    bytes_sent = {n: set() for n in methods}
    for rep in range(a.repeat + 1):  # the first round warms up and is not timed
        for name, (w, opt, _) in methods.items():
            dist.barrier()
            sent["n"] = 0
            t0 = time.perf_counter()
            opt.zero_grad()
            w(x).pow(2).mean().backward()
            opt.step()
            dt = time.perf_counter() - t0
            bytes_sent[name].add(sent["n"])
            if rep:
                times[name].append(dt)
    if rank == 0:
        floor = statistics.median(times["full finetuning"])
        print(f"DDP, 2 gloo processes on {os.cpu_count()} CPUs (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}); "
              f"{a.layers} x Linear({a.width}, {a.width}), {a.batch} x {a.seq} tokens per process, "
              f"median of {a.repeat} steps")
        print(f"{'method':<18} {'grad bytes':>12} {'sent/step':>12} {'step ms':>9} {'ratio':>6}")
        for name, (_, _, gb) in methods.items():
            med = statistics.median(times[name])
            s = sorted(bytes_sent[name])
            shown = f"{s[0]:,}" if len(s) == 1 else "/".join(f"{v:,}" for v in s)
            print(f"{name:<18} {gb:>12,} {shown:>12} {med * 1e3:>9.1f} {med / floor:>6.2f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    args = parse()
    if "LOCAL_RANK" not in os.environ:
        sys.exit(launch())
    worker(args)
