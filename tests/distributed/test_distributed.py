"""VeRA under torch.distributed, launched with torchrun (2 processes, gloo, CPU): DDP, FSDP2 per-layer,
whole-model, mixed precision and meta-device initialisation (tests/distributed/worker.py runs every
scenario in one launch; these tests assert on what it recorded).

Tolerance (float32 reduction order). Per step, both sides evaluate in float32 the same exact
gradient g = sum_i g_i over the N rows of the global batch (g_i: gradient of loss_i / N); one process
sums the 8 rows in one backward, the 2 ranks sum 4 rows each and average the two partial results (4 ranks:
2 rows each, then 4 partials: still at most K terms per sum, so the same bound).
Each evaluation is a sum of products accumulated along at most K = N * SEQ * W * L terms (rows, tokens,
the widest layer W, the longest chain of L linear layers the backward passes through), so each is within
gamma_K * M of g, with gamma_K = K u / (1 - K u), u = 2**-24 and M = sum_i |g_i| (float64, per element,
from the same vectors); the two differ by at most 2 gamma_K M. Comparing each step from the same vectors
(not two drifting trajectories) keeps the bound free of error growth across steps; the SGD update
itself is elementwise, so equal-within-bound gradients give equal-within-lr*bound vectors."""
import json
import os
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402

from conftest import ROOT  # noqa: E402
from dist_launch import torchrun  # noqa: E402

fcntl = pytest.importorskip("fcntl", reason="POSIX file locks (fcntl) are needed to launch once per run")

pytestmark = pytest.mark.distributed

WORKER = Path(__file__).with_name("worker.py")
N, SEQ, W, L = 8, 4, 24, 7  # worker.py's batch, sequence, widest layer; TinyNet: 3 linears x 2 blocks + head
U = 2.0 ** -24
K = N * SEQ * W * L
BOUND = 2 * K * U / (1 - K * U)  # 2 gamma_K, relative to M
EXACT_KINDS = ["ddp", "fsdp_layer", "fsdp_model", "fsdp_meta", "fsdp_meta_stored", "fsdp_mixed"]
ALL_KINDS = EXACT_KINDS + ["fsdp_mp"]
# 4 ranks: 2 rows each, the same bound (module docstring). Not fsdp_mixed: with 2 rows a rank can hold rows of
# one adapter only, and the other adapter's vectors then get no gradient there, so the ranks' reduce-scatters
# differ (a gloo collective mismatch; README "Training on several machines")
KINDS4 = ["ddp", "fsdp_layer", "fsdp_meta", "fsdp_meta_stored", "fsdp_mixed"]


def _unavailable() -> str | None:
    if not dist.is_available():
        return "torch.distributed is not available in this torch build"
    if not dist.is_gloo_available():
        return "the gloo backend is not available in this torch build"
    try:
        import multiprocessing
        multiprocessing.get_context("spawn")
    except (ImportError, ValueError) as e:
        return f"multiprocessing cannot start processes here: {e}"
    return None


def _launch(tmp_path_factory, name: str, nproc: int, kinds: list[str] | None, timeout: float):
    """One torchrun launch of worker.py per test run (under pytest-xdist the workers share the base temp's
    parent and a lock), bounded in time, nothing left running (dist_launch)."""
    reason = _unavailable()
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    out = base / name
    with open(base / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "results.json").exists():
            out.mkdir(exist_ok=True)
            r = torchrun(WORKER, [str(out)] + ([",".join(kinds)] if kinds else []), nproc=nproc, timeout=timeout)
            assert r.left_running == [], f"processes of the launch still ran after it ended: {r.left_running}"
            assert r.returncode is not None, f"torchrun did not finish in {timeout} s:\n{r.tail()}"
            assert r.returncode == 0, r.tail()
    return out, json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return _launch(tmp_path_factory, "vera_distributed", 2, None, 400)


@pytest.fixture(scope="module")
def run4(tmp_path_factory):
    return _launch(tmp_path_factory, "vera_distributed4", 4, KINDS4, 300)


def _check_gradients(res, kinds, world_size):
    assert res["world_size"] == world_size
    for kind in kinds:
        for t, step in enumerate(res[kind]["steps"]):
            assert step["ratio"], kind
            for name, ratio in step["ratio"].items():
                assert ratio <= BOUND, (kind, t, name, ratio, BOUND)
                # the bound is far below what a real fault (a gradient not averaged, one rank's rows
                # lost, different A/B per rank) changes: it would be caught
                assert BOUND * step["mag"][name] < 0.05 * step["grad"][name] or step["grad"][name] == 0, name
        assert any(v > 0 for v in res[kind]["steps"][-1]["grad"].values())


def _check_saves(out, kinds):
    for kind in kinds:
        a, b = (out / f"{kind}.safetensors").read_bytes(), (out / f"{kind}_one.safetensors").read_bytes()
        assert a == b, kind
    if "fsdp_mixed" in kinds:
        b = out / "fsdp_mixed_b.safetensors"  # the second adapter of the mixed-adapter run
        assert b.read_bytes() == (out / "fsdp_mixed_b_one.safetensors").read_bytes()


def _check_bytes(res, kinds):
    for kind in kinds:
        r = res[kind]
        assert r["frozen_with_grad"] == []  # frozen base weights get no gradient, so nothing to send
        # 2 blocks x (2 x (8 + 16) + 8 + 24) x 4 B; the mixed run adds adapter b: 2 x ((4 + 16) + (4 + 24)) x 4 B
        # (every vector length divides by 2 and 4: FSDP2 pads nothing)
        want = 640 + (384 if kind == "fsdp_mixed" else 0)
        assert r["vector_bytes"] == r["vector_bytes_padded"] == want
        for step in r["steps"]:
            b = step["bytes"]
            if kind == "ddp":
                assert b == {"reduce_scatter": 0, "all_reduce": want, "ddp": want}
            else:  # reduce_dtype float32 under the mixed precision policy too
                assert b == {"reduce_scatter": want, "all_reduce": 0, "ddp": 0}, kind


def test_two_ranks_give_the_one_process_gradient_within_the_reduction_order_bound(run):
    _check_gradients(run[1], EXACT_KINDS, 2)


def test_sharded_save_is_bit_identical_to_the_one_process_file(run):
    import vera_ref
    out, res = run
    _check_saves(out, ALL_KINDS)
    assert res["fsdp_layer"]["sharded"] and not res["ddp"]["sharded"]  # the save really ran on DTensors
    ad = vera_ref.load_adapter(out / "fsdp_layer.safetensors")
    final = torch.load(out / "fsdp_layer_final.pt")
    lb = final["base_model.blocks.0.query.vera_lambda_b.default"].numpy()
    assert (ad.lambda_b["blocks.0.query"] == lb).all() and abs(lb).max() > 0


def test_bytes_communicated_per_step_are_the_vectors_gradient_bytes(run):
    _check_bytes(run[1], ALL_KINDS)


def test_four_ranks_gradient_save_and_bytes(run4):
    """4 processes, 2 rows each: DDP, FSDP2 per layer and meta-device starts, the same claims as on 2."""
    out, res = run4
    _check_gradients(res, KINDS4, 4)
    _check_saves(out, KINDS4)
    assert res["fsdp_layer"]["sharded"]
    _check_bytes(res, KINDS4)
    _check_projections(res, KINDS4)


def _check_projections(res, kinds):
    for kind in kinds:
        if kind == "fsdp_meta_stored":  # generator stored: A, B are the model's buffers, drawn again from the
            # seed on each rank after to_empty (a wrong pair on any rank breaks the gradient bound above)
            assert res[kind]["state_keys_with_projection"] == ["vera_projections.default__A__0",
                                                               "vera_projections.default__B__0"]
            assert res[kind]["cache_devices"] == []
            continue
        assert res[kind]["state_keys_with_projection"] == []
        assert res[kind]["cache_devices"] == ["cpu"], kind  # no meta-device A/B left from meta init


def test_projections_are_rebuilt_per_rank_never_stored(run):
    _, res = run
    _check_projections(res, ALL_KINDS)
    assert all(".vera_lambda_" in k for k in res["dcp_keys"])


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")
def test_distributed_checkpoint_round_trips_and_resumes_on_one_process(run):
    from vera_torch import VeraConfig, get_vera_model
    from vera_torch import distributed as vd
    sys.path.insert(0, str(ROOT / "tests"))
    from torch_models import TinyNet
    out, res = run
    assert res["dcp_equal"] and res["load_vectors_equal"]
    torch.manual_seed(0)
    one = get_vera_model(TinyNet(), VeraConfig(r=8, target_modules=["query", "value", "c_fc"], seed=21))
    vd.load_checkpoint(one, out / "dcp")  # world size 1, no process group
    final = torch.load(out / "fsdp_layer_final.pt")
    got = vd.vector_state_dict(one)
    assert sorted(got) == sorted(final) and all(torch.equal(got[k], final[k]) for k in final)
    path = out / "resumed.safetensors"
    one.save_adapter(path)
    assert path.read_bytes() == (out / "fsdp_layer.safetensors").read_bytes()
