"""Launched by tests/distributed/test_distributed.py with torchrun (gloo, CPU; dist_launch.torchrun):
  python -m torch.distributed.run --nproc_per_node 2 worker.py OUT_DIR               # every scenario
  python -m torch.distributed.run --nproc_per_node 4 worker.py OUT_DIR ddp,fsdp_layer  # those only

Every scenario trains TinyNet's VeRA vectors for a few SGD steps on a global batch split over the
ranks and records, per step, the distributed gradient, the one-process float32 gradient from the
same vectors on the whole batch, the float64 magnitude sum that bounds their difference, and the
bytes sent by the gradient collectives. Rank 0 writes OUT_DIR/results.json; the test asserts."""
import copy
import json
import os
import sys
from datetime import timedelta

from dist_launch import die_with_parent

die_with_parent()  # a worker never outlives its torchrun

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict  # noqa: E402
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard  # noqa: E402
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks  # noqa: E402
from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: E402

sys.path[:0] = [os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")]
from torch_models import TinyNet  # noqa: E402
from vera_torch import VeraConfig, get_vera_model  # noqa: E402
from vera_torch import distributed as vd  # noqa: E402

OUT = sys.argv[1]
EVERY_KIND = ["ddp", "fsdp_layer", "fsdp_model", "fsdp_mp", "fsdp_meta", "fsdp_meta_stored", "fsdp_mixed"]
KINDS = sys.argv[2].split(",") if len(sys.argv) > 2 else EVERY_KIND
FULL = KINDS == EVERY_KIND  # the whole run adds the checkpoint round trips and the Trainer example
N, SEQ, D, LR, STEPS = 8, 4, 16, 0.5, 3
CFG = dict(r=8, target_modules=["query", "value", "c_fc"], seed=21)

dist.init_process_group("gloo", timeout=timedelta(seconds=120))  # a stuck peer is an error, not a hang
RANK, WS = dist.get_rank(), dist.get_world_size()
g = torch.Generator().manual_seed(7)
X, Y = torch.randn(N, SEQ, D, generator=g), torch.randint(0, 3, (N,), generator=g)
PER = N // WS
XS, YS = X[RANK * PER:(RANK + 1) * PER], Y[RANK * PER:(RANK + 1) * PER]


class Count:
    """Bytes handed to the gradient collectives in one step."""
    reduce_scatter = 0
    all_reduce = 0
    ddp_buckets = 0


_rs = dist.reduce_scatter_single
_ar = dist.all_reduce


def _rs_counted(output, input, *a, **k):  # noqa: A002 - torch's argument names
    Count.reduce_scatter += input.numel() * input.element_size()
    return _rs(output, input, *a, **k)


def _ar_counted(tensor, *a, **k):
    Count.all_reduce += tensor.numel() * tensor.element_size()
    return _ar(tensor, *a, **k)


dist.reduce_scatter_single = _rs_counted  # FSDP2's DefaultReduceScatter calls dist.reduce_scatter_single
dist.all_reduce = _ar_counted


def ddp_hook(state, bucket):
    Count.ddp_buckets += bucket.buffer().numel() * bucket.buffer().element_size()
    return default_hooks.allreduce_hook(None, bucket)


IDS = ["default", "b", None, "b", "default", "default", "b", None]  # mixed-adapter rows (fsdp_mixed)


def make(device=None, mixed=False, stored=False):
    torch.manual_seed(0)
    cfg = dict(CFG, generator="stored") if stored else CFG  # stored: A, B are buffers (drawn from the seed)
    if mixed:  # two adapters of different seeds and ranks, both trained, one batch
        m = get_vera_model(TinyNet(), VeraConfig(**CFG))
        m.add_adapter("b", VeraConfig(r=4, target_modules=["query", "c_fc"], seed=5, d_initial=0.5))
        m.set_trainable(["default", "b"])
        return m
    if device == "meta":  # the base built without memory; the vectors follow its device
        with torch.device("meta"):
            base = TinyNet()
        return get_vera_model(base, VeraConfig(**cfg))
    return get_vera_model(TinyNet(), VeraConfig(**cfg))


def strip(name):
    return name[len("module."):] if name.startswith("module.") else name


def vectors(model):  # a collective under FSDP2
    return {k: vd.full(v).detach().clone() for k, v in vd.vector_state_dict(model).items()}


def grads(wrapped):  # a collective under FSDP2
    return {strip(n): vd.full(p.grad).detach().clone() for n, p in wrapped.named_parameters() if p.requires_grad}


def fwd(m, x, rows, mixed):
    return m(x, adapter_ids=[IDS[i] for i in rows]) if mixed else m(x)


def reference(v, mixed=False, stored=False):
    """One process, whole batch, from vectors v: the float32 gradient, and the float64 sum over rows of
    |per-row gradient of loss/N| (the magnitude the reduction-order bound scales with)."""
    m = make(mixed=mixed, stored=stored)
    m.load_state_dict(v, strict=False)
    F.cross_entropy(fwd(m, X, range(N), mixed), Y).backward()
    g32 = {n: p.grad.clone() for n, p in m.named_parameters() if p.requires_grad}
    m64 = copy.deepcopy(m).double()
    mag = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in m64.named_parameters() if p.requires_grad}
    for i in range(N):
        if mixed and IDS[i] is None:
            continue  # a base-model row: no vector reaches its loss
        m64.zero_grad()
        (F.cross_entropy(fwd(m64, X[i:i + 1].double(), [i], mixed), Y[i:i + 1], reduction="sum") / N).backward()
        for n, p in m64.named_parameters():
            if p.requires_grad and p.grad is not None:  # a row of one adapter leaves the other's without
                mag[n] += p.grad.abs()
    return g32, mag


def wrap(kind, m):
    if kind == "ddp":
        w = DDP(m)
        w.register_comm_hook(None, ddp_hook)
        return w
    if kind in ("fsdp_layer", "fsdp_meta", "fsdp_meta_stored", "fsdp_mixed"):
        for b in m.base_model.blocks:
            fully_shard(b)
        fully_shard(m)
    elif kind == "fsdp_model":
        fully_shard(m)
    elif kind == "fsdp_mp":
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for b in m.base_model.blocks:
            fully_shard(b, mp_policy=mp)
        fully_shard(m, mp_policy=mp)
    return m


def scenario(kind):
    mixed = kind == "fsdp_mixed"
    stored = kind == "fsdp_meta_stored"
    if kind.startswith("fsdp_meta"):  # init_empty_weights-style: built on meta, sharded, materialised, loaded
        m = make("meta", stored=stored)
        wrap(kind, m)
        m.to_empty(device="cpu")
        base = {k: v for k, v in make().state_dict().items() if "vera_" not in k}  # a base checkpoint's keys
        set_model_state_dict(m, base, options=StateDictOptions(full_state_dict=True, strict=False))
        vd.init_vectors(m)
        w = m
    else:
        m = make(mixed=mixed)
        w = wrap(kind, m)
    trainable = [p for p in w.parameters() if p.requires_grad]
    frozen_grad = [n for n, p in w.named_parameters() if not p.requires_grad]
    opt = torch.optim.SGD(trainable, lr=LR)
    steps = []
    for _ in range(STEPS):
        v = vectors(m)
        opt.zero_grad()
        Count.reduce_scatter = Count.all_reduce = Count.ddp_buckets = 0
        F.cross_entropy(fwd(w, XS, range(RANK * PER, (RANK + 1) * PER), mixed), YS).backward()
        sent = {"reduce_scatter": Count.reduce_scatter, "all_reduce": Count.all_reduce, "ddp": Count.ddp_buckets}
        gd = grads(w)
        opt.step()
        rec = {"bytes": sent}
        if RANK == 0 and kind != "fsdp_mp":
            g32, mag = reference(v, mixed, stored)
            rec["diff"] = {n: (gd[n] - g32[n]).abs().max().item() for n in g32}
            rec["ratio"] = {n: ((gd[n] - g32[n]).abs() / mag[n].float().clamp_min(1e-30)).max().item() for n in g32}
            rec["grad"] = {n: g32[n].abs().max().item() for n in g32}
            rec["mag"] = {n: mag[n].max().item() for n in g32}
        steps.append(rec)
    path = os.path.join(OUT, f"{kind}.safetensors")
    if kind.startswith("fsdp"):
        m.save_adapter(path)  # a collective: every rank calls it
        if mixed:
            m.save_adapter(os.path.join(OUT, f"{kind}_b.safetensors"), "b")
    else:
        vd.save_adapter(w, path)
    final = vectors(m)
    res = {"steps": steps, "frozen_with_grad": [n for n in frozen_grad if getattr(dict(w.named_parameters())[n],
                                                                                   "grad", None) is not None],
           "vector_bytes": sum(p.numel() * 4 for p in trainable),
           "vector_bytes_padded": sum(-(-p.numel() // WS) * WS * 4 for p in trainable),
           "sharded": vd.has_sharded_vectors(m),
           "cache_devices": sorted({dev for (_, dev) in m._store._cache}),
           "state_keys_with_projection": [k for k in m.state_dict() if "__A__" in k or "__B__" in k]}
    if RANK == 0:
        one = make(mixed=mixed, stored=stored)
        one.load_state_dict(final, strict=False)
        one.save_adapter(os.path.join(OUT, f"{kind}_one.safetensors"))
        if mixed:
            one.save_adapter(os.path.join(OUT, f"{kind}_b_one.safetensors"), "b")
        torch.save(final, os.path.join(OUT, f"{kind}_final.pt"))
    return m, res


results = {"world_size": WS}
models = {}
for kind in KINDS:
    models[kind], results[kind] = scenario(kind)
if not FULL:
    if RANK == 0:
        with open(os.path.join(OUT, "results.json"), "w") as f:
            json.dump(results, f)
    dist.barrier()
    dist.destroy_process_group()
    sys.exit(0)

# torch.distributed.checkpoint: the vectors only, round-tripped into a model sharded differently
ckpt = os.path.join(OUT, "dcp")
vd.save_checkpoint(models["fsdp_layer"], ckpt)
fresh = make()
fully_shard(fresh)
vd.load_checkpoint(fresh, ckpt)
want = torch.load(os.path.join(OUT, "fsdp_layer_final.pt")) if RANK == 0 else None
got = vectors(fresh)
# a spec file loaded into a sharded model (load_vectors) gives the same vectors
again = make()
fully_shard(again)
vd.load_vectors(again, os.path.join(OUT, "fsdp_layer.safetensors"))
got2 = vectors(again)
if RANK == 0:
    results["dcp_equal"] = sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want)
    results["dcp_keys"] = sorted(got)
    results["load_vectors_equal"] = all(torch.equal(got2[k], want[k]) for k in want)

# the Hugging Face Trainer example on the same 2 processes (its DDP uses this process group)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples"))
import trainer_vera  # noqa: E402
trainer_vera.main(["--output_dir", os.path.join(OUT, "trainer"), "--max_steps", "4", "--save_steps", "2",
                   "--batch_size", "4"])
# resumed under torchrun from its own 2-process checkpoint: the same bytes as the uninterrupted run
if RANK == 0:
    import shutil
    shutil.copytree(os.path.join(OUT, "trainer", "checkpoint-2"), os.path.join(OUT, "trainer_resumed", "checkpoint-2"))
dist.barrier()
trainer_vera.main(["--output_dir", os.path.join(OUT, "trainer_resumed"), "--max_steps", "4", "--save_steps", "2",
                   "--batch_size", "4", "--resume_from_checkpoint", "last"])


# The Trainer's own FSDP2 path (fsdp_config version 2, Accelerate's fully_shard per BertLayer) on CPU. Accelerate
# 1.15 enables FSDP only for accelerator devices (VeraTrainer refuses rather than train with DDP), so this
# subclass sets Accelerate's state to FSDP with the plugin the Trainer built; everything after that (wrapping,
# training, the Trainer's checkpoints, resuming) is the Trainer's and Accelerate's FSDP2 code.
from transformers import Trainer  # noqa: E402
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin  # noqa: E402

SHARDED_AT_SAVE = []


class CpuFsdp2Trainer(trainer_vera.VeraTrainer):
    def create_accelerator_and_postprocess(self):
        Trainer.create_accelerator_and_postprocess(self)  # not VeraTrainer's refusal
        st = self.accelerator.state
        st.distributed_type = DistributedType.FSDP
        st.fsdp_plugin = FullyShardedDataParallelPlugin(**self.args.fsdp_plugin_args)
        self.is_fsdp_enabled = True

    def _save(self, output_dir=None, state_dict=None):
        SHARDED_AT_SAVE.append(vd.has_sharded_vectors(self.model))
        return super()._save(output_dir, state_dict)


trainer_vera.TRAINER = CpuFsdp2Trainer
FS = ["--save_steps", "2", "--batch_size", "4", "--fsdp"]
trainer_vera.main(["--output_dir", os.path.join(OUT, "fsdp_trainer"), "--max_steps", "4"] + FS)
trainer_vera.main(["--output_dir", os.path.join(OUT, "fsdp_trainer_resumed"), "--max_steps", "2"] + FS)
trainer_vera.main(["--output_dir", os.path.join(OUT, "fsdp_trainer_resumed"), "--max_steps", "4",
                   "--resume_from_checkpoint", "last"] + FS)
results["fsdp_trainer_sharded_at_save"] = SHARDED_AT_SAVE
if RANK == 0:
    with open(os.path.join(OUT, "results.json"), "w") as f:
        json.dump(results, f)
dist.barrier()
dist.destroy_process_group()
