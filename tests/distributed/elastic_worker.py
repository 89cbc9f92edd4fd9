"""Launched by tests/distributed/test_elastic.py (dist_launch.torchrun: a fresh rendezvous store per attempt):
  TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 python -m torch.distributed.run --nproc_per_node 2 --max-restarts 3 \
      elastic_worker.py OUT_DIR

DDP training of TinyNet's VeRA vectors for STEPS SGD steps, a spec-file checkpoint every EVERY steps (the
step number in its provenance, one atomic file). On the first attempt rank 1 kills itself (SIGKILL) after
step KILL_AT; torchrun restarts both ranks, which resume from the last checkpoint. The finishing attempt
also trains the same STEPS uninterrupted and rank 0 writes both final vectors for the test to compare."""
import json
import os
from datetime import timedelta
import signal
import sys
import time

from dist_launch import die_with_parent

die_with_parent()  # a worker never outlives its torchrun

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: E402

sys.path[:0] = [os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")]
import vera_ref  # noqa: E402
from torch_models import TinyNet  # noqa: E402
from vera_torch import VeraConfig, get_vera_model  # noqa: E402
from vera_torch import distributed as vd  # noqa: E402

OUT = sys.argv[1]
STEPS, EVERY, KILL_AT, N = 6, 2, 3, 8
CKPT = os.path.join(OUT, "ckpt.safetensors")
ATTEMPT = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))

if ATTEMPT >= 1 and int(os.environ["RANK"]) == 1:
    # the restarted rank 1 reaches the rendezvous late: the case where a store shared across attempts (torchrun's
    # default) hands rank 0 the dead rank's address from attempt 0 (dist_launch's docstring); a fresh store per
    # attempt must make this harmless
    time.sleep(2)
dist.init_process_group("gloo", timeout=timedelta(seconds=60))  # a stuck peer is an error (then a restart)
RANK, WS = dist.get_rank(), dist.get_world_size()
g = torch.Generator().manual_seed(7)
X, Y = torch.randn(STEPS, N, 4, 16, generator=g), torch.randint(0, 3, (STEPS, N), generator=g)
PER = N // WS


def make():
    torch.manual_seed(0)
    return get_vera_model(TinyNet(), VeraConfig(r=8, target_modules=["query", "value", "c_fc"], seed=21))


def train(resume: bool, kill: bool):
    m = make()
    start = 0
    if resume and os.path.exists(CKPT):
        vd.load_vectors(m, CKPT)
        start = int(vera_ref.load_adapter(CKPT).config.provenance["step"])
    w = DDP(m)
    opt = torch.optim.SGD([p for p in w.parameters() if p.requires_grad], lr=0.5)
    for step in range(start, STEPS):
        xs, ys = X[step, RANK * PER:(RANK + 1) * PER], Y[step, RANK * PER:(RANK + 1) * PER]
        opt.zero_grad()
        F.cross_entropy(w(xs), ys).backward()
        opt.step()
        done = step + 1
        if resume and done % EVERY == 0:
            vd.save_adapter(w, CKPT, provenance={"step": done})  # every rank; rank 0 writes atomically
        if kill and done == KILL_AT and RANK == 1:
            os.kill(os.getpid(), signal.SIGKILL)  # mid-run, after the step-2 checkpoint
    return m, start


resumed, started_at = train(resume=True, kill=ATTEMPT == 0)
plain, _ = train(resume=False, kill=False)
if RANK == 0:
    torch.save({"resumed": vd.vector_state_dict(resumed), "plain": vd.vector_state_dict(plain)},
               os.path.join(OUT, "final.pt"))
    with open(os.path.join(OUT, "elastic.json"), "w") as f:
        json.dump({"attempt": ATTEMPT, "started_at": started_at}, f)
dist.barrier()
dist.destroy_process_group()
