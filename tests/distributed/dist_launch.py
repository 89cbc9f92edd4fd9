"""One way to launch a worker script under torchrun for the tests, and to leave nothing running.

torchrun starts each worker in a session of its own (start_new_session), so killing torchrun's process
group does not reach them, and a worker whose torchrun died is reparented and keeps running. So:
- every process of a launch carries VERA_LAUNCH_ID=<uuid> in its environment; after the launch (finished,
  failed or timed out) every process still carrying it is killed with SIGKILL and named in the result;
- each worker calls die_with_parent() first: Linux's PR_SET_PDEATHSIG kills it when its torchrun dies;
- the rendezvous is a c10d store on 127.0.0.1, port 0 (the kernel's free port, no race), and gloo talks
  over the loopback interface (GLOO_SOCKET_IFNAME=lo), whatever the host name resolves to;
- TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1: each restart attempt gets a fresh store on a fresh port. With
  torchrun's default (torch 2.13) the workers of every attempt share the agent's store, whose keys are not
  prefixed by attempt: a restarted rank that reaches init_process_group before its peer reads the killed
  peer's address from the previous attempt and fails with "Gloo connectFullMesh failed ... Connect timeout"
  (or "Connection refused"); reproduced deterministically by delaying one rank of the restarted attempt.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MARK = "VERA_LAUNCH_ID"


def die_with_parent() -> None:
    """Called first by a worker: SIGKILL it when the process that started it (torchrun) dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    if os.getppid() == 1:  # the parent already died before prctl: nothing will signal us
        os._exit(1)


def _marked(launch_id: str) -> list[int]:
    """Process ids whose environment holds VERA_LAUNCH_ID=launch_id (Linux /proc; [] elsewhere)."""
    needle = f"{MARK}={launch_id}".encode()
    found = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for d in proc.iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            env = (d / "environ").read_bytes()
        except OSError:  # gone, or not ours
            continue
        if needle in env.split(b"\0"):
            found.append(int(d.name))
    return found


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@dataclass
class Result:
    returncode: int | None  # None: killed at the time limit
    out: str
    err: str
    seconds: float
    left_running: list[int] = field(default_factory=list)  # marked processes alive after torchrun ended

    def tail(self) -> str:
        return self.out[-3000:] + "\n" + self.err[-6000:]


def torchrun(script: Path, args: list[str], *, nproc: int = 2, max_restarts: int = 0, timeout: float = 240,
             env: dict[str, str] | None = None) -> Result:
    """Run ``torchrun --nproc_per_node nproc [--max-restarts n] script args`` to its end or ``timeout``
    seconds, then kill every process of the launch still running (see the module docstring)."""
    launch_id = uuid.uuid4().hex
    e = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")
    e[MARK] = launch_id
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT / "backends"), str(ROOT), e.get("PYTHONPATH", "")])
    e.update(env or {})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nproc),
           "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0", "--rdzv-id", launch_id,
           "--local-addr", "127.0.0.1", "--max-restarts", str(max_restarts), str(script), *args]
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
        rc: int | None = p.returncode
    except subprocess.TimeoutExpired:
        _kill(_marked(launch_id))  # the workers first (their own sessions), then torchrun's group
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = p.communicate()
        rc = None
    seconds = time.monotonic() - t0
    left = _marked(launch_id)
    _kill(left)
    return Result(rc, out, err, seconds, left)
