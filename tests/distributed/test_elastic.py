"""A fault under torchrun's elastic restart: one rank is killed mid-run, torchrun (--max-restarts)
restarts both, and training resumes from the last spec-file checkpoint with nothing lost: the final
vectors equal an uninterrupted run's bit for bit (SGD has no optimizer state; the checkpoint holds the
float32 vectors exactly).

The launch (dist_launch.torchrun) gives each restart attempt a fresh rendezvous store on a fresh port
(TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1): with torchrun's shared store a restarted gloo rank could read the
killed rank's address and fail in init_process_group (dist_launch's docstring; the worker delays the
restarted rank 1 so that case is exercised on every run). Whatever happens, the launch is bounded in time
and leaves no process running."""
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from dist_launch import torchrun  # noqa: E402
from test_distributed import _unavailable  # noqa: E402

pytestmark = pytest.mark.distributed


def test_killed_rank_restarts_and_resumes_from_the_last_checkpoint(tmp_path):
    reason = _unavailable()
    if reason:
        pytest.skip(reason)
    r = torchrun(Path(__file__).with_name("elastic_worker.py"), [str(tmp_path)], nproc=2, max_restarts=3,
                 timeout=300)
    assert r.left_running == [], f"processes of the launch still ran after it ended: {r.left_running}"
    assert r.returncode is not None, f"torchrun with a killed rank did not finish in 300 s:\n{r.tail()}"
    assert r.returncode == 0, r.tail()
    info = json.loads((tmp_path / "elastic.json").read_text())
    # exactly one restart: the kill (a failed rendezvous would take another), resumed from the step-2 checkpoint
    assert info == {"attempt": 1, "started_at": 2}, (info, r.tail())
    final = torch.load(tmp_path / "final.pt")
    assert final["resumed"].keys() == final["plain"].keys() and final["plain"]
    for k, v in final["plain"].items():
        assert torch.equal(final["resumed"][k], v), k
    assert any(v.abs().max() > 0 for k, v in final["plain"].items() if "lambda_b" in k)
