"""The bookkeeping the PEFT and ONNX-adapter fuzz harnesses share (tools/fuzz_peft.py,
tools/fuzz_onnx_adapter.py): run one case timed, every ``memory_every``-th case again under
tracemalloc (not timed: tracemalloc slows it), and count outcomes, escapes, multi-line messages,
the slowest case and the largest peak."""
from __future__ import annotations

import collections
import random
import time
import tracemalloc
from typing import Any, Callable


def new_stats() -> dict:
    return {"cases": 0, "kinds": collections.Counter(), "details": collections.Counter(), "escapes": [],
            "multiline": [], "slowest": (0.0, -1), "peak": (0, -1), "over": 0, "traced": 0}


def measure(run_case: Callable[[random.Random, Any], tuple[str, str]], case_seed: int, arg: Any, s: dict,
            memory_every: int) -> tuple[str, str, float, int]:
    """(kind, detail, seconds, tracemalloc peak or 0) of one case."""
    t0 = time.perf_counter()
    kind, detail = run_case(random.Random(case_seed), arg)
    dt = time.perf_counter() - t0
    peak = 0
    if s["cases"] % memory_every == 0:
        tracemalloc.start()
        run_case(random.Random(case_seed), arg)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        s["traced"] += 1
    return kind, detail, dt, peak


def record(s: dict, kind: str, detail: str, dt: float, peak: int, slow_s: float, peak_mib: int) -> None:
    i = s["cases"]
    s["cases"] += 1
    s["kinds"][kind] += 1
    s["details"][f"{kind}: {detail}" if kind not in ("escape", "multiline") else kind] += 1
    if kind == "escape":
        s["escapes"].append((i, detail))
    if kind == "multiline":
        s["multiline"].append((i, detail))
    if dt > s["slowest"][0]:
        s["slowest"] = (dt, i)
    if peak > s["peak"][0]:
        s["peak"] = (peak, i)
    if dt > slow_s or peak > peak_mib << 20:
        s["over"] += 1
