"""A fault under torchrun's elastic restart: one rank is killed mid-run, torchrun (--max-restarts)
restarts both, and training resumes from the last spec-file checkpoint with nothing lost: the final
vectors equal an uninterrupted run's bit for bit (SGD has no optimizer state; the checkpoint holds the
float32 vectors exactly)."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from conftest import ROOT  # noqa: E402
from test_distributed import _unavailable  # noqa: E402

pytestmark = pytest.mark.distributed


# Opt-in: in a clean-clone CI run with two xdist workers the restarted workers hung in gloo's
# init_process_group (torch 2.13, --standalone rendezvous) until the 400 s limit; it passed in 3 of 4
# runs alone. A test that hangs one run in four is not a test of the code: it runs with VERA_ELASTIC=1.
ELASTIC = os.environ.get("VERA_ELASTIC") == "1"


@pytest.mark.skipif(not ELASTIC, reason="elastic restart under torchrun is opt-in (VERA_ELASTIC=1): restarted "
                                        "gloo workers can hang in init_process_group on a loaded machine")
def test_killed_rank_restarts_and_resumes_from_the_last_checkpoint(tmp_path):
    reason = _unavailable()
    if reason:
        pytest.skip(reason)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "backends"), str(ROOT), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "--max-restarts", "3", str(Path(__file__).with_name("elastic_worker.py")), str(tmp_path)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=400)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)  # torchrun and its workers: nothing left running
        out, err = p.communicate()
        pytest.fail("torchrun with a killed rank did not finish in 400 s:\n" + err[-4000:])
    assert p.returncode == 0, out[-3000:] + err[-6000:]
    info = json.loads((tmp_path / "elastic.json").read_text())
    # the restart happened and resumed from the step-2 checkpoint (one kill; further restarts are allowed
    # only because a restarted gloo group can time out connecting on a heavily loaded machine)
    assert info["attempt"] >= 1 and info["started_at"] == 2, info
    final = torch.load(tmp_path / "final.pt")
    assert final["resumed"].keys() == final["plain"].keys() and final["plain"]
    for k, v in final["plain"].items():
        assert torch.equal(final["resumed"][k], v), k
    assert any(v.abs().max() > 0 for k, v in final["plain"].items() if "lambda_b" in k)
