"""Under DDP nothing about A and B is broadcast: each rank regenerates them, and training
on 2 CPU processes (gloo) gives the vectors of one process on the same global batch (in float64,
so the comparison's tolerance holds on any machine)."""
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402

from conftest import ROOT  # noqa: E402

WORKER = r"""
import os, sys, torch
sys.path[:0] = [{tests!r}]
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch_models import TinyNet
from vera_torch import VeraConfig, get_vera_model

def make():
    torch.manual_seed(0)
    return get_vera_model(TinyNet(), VeraConfig(r=8, target_modules=["query", "value", "c_fc"], seed=21,
                                                modules_to_save=["classifier"])).double()

g = torch.Generator().manual_seed(7)
X, Y = torch.randn(8, 4, 16, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g)
mode = sys.argv[1]
if mode == "single":
    model = make()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(3):
        opt.zero_grad(); torch.nn.functional.cross_entropy(model(X), Y).backward(); opt.step()
else:
    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo")
    model = make()
    # A and B are not parameters or buffers: DDP has nothing of them to broadcast
    assert not any("__A__" in k for k in model.state_dict())
    ddp = DDP(model)
    opt = torch.optim.SGD([p for p in ddp.parameters() if p.requires_grad], lr=0.5)
    xs, ys = X[rank * 4:(rank + 1) * 4], Y[rank * 4:(rank + 1) * 4]
    for _ in range(3):
        opt.zero_grad(); torch.nn.functional.cross_entropy(ddp(xs), ys).backward(); opt.step()
    dist.barrier()  # both ranks done with every collective before either tears the group down
    dist.destroy_process_group()
    if rank != 0:
        sys.exit(0)
torch.save({{n: p.detach() for n, p in model.named_parameters() if p.requires_grad}}, {out!r} + mode)
"""


def test_ddp_two_processes_equal_one_process(tmp_path):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    script = tmp_path / "w.py"
    script.write_text(WORKER.format(tests=str(ROOT / "tests"), out=str(tmp_path / "vec_")))
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT="29517", WORLD_SIZE="2", OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(script), "ddp"], env=dict(env, RANK=str(r)),
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    single = subprocess.run([sys.executable, str(script), "single"], capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    a, b = torch.load(tmp_path / "vec_ddp"), torch.load(tmp_path / "vec_single")
    assert a.keys() == b.keys() and len(a) > 0
    # float64: one step's gradients on 2 ranks (averaged: one more rounding) and on 1 differ by under 1e-11
    # of their scale (the sums' orders, ~200 ops of 2^-53 on a value's way, times the net's gains < 100);
    # 3 SGD steps (lr 0.5) carry that with a gain 1 + lr |H| < 10 each: under 1e-8 of the vectors' scale
    # on any machine, while a rank's gradient lost or summed instead of averaged moves them by > 1e-2.
    for k in a:
        assert a[k].dtype == torch.float64, k
        assert torch.allclose(a[k], b[k], rtol=0, atol=1e-7 * max(1.0, float(b[k].abs().max()))), k
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in a.items() if "lambda_b" in k)
