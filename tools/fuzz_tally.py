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


def arguments(doc: str | None, argv: list[str] | None):
    """--minutes, --cases, --seed (default: 1000 cases)."""
    import argparse
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, help="run this long")
    ap.add_argument("--cases", type=int, help="run this many cases")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.minutes is None and args.cases is None:
        args.cases = 1000
    return args


def report(s: dict, seed: int, details: str, slow_s: float, peak_mib: int) -> int:
    """Print the tally; exit status 1 on an escape, a multi-line message or a case over its bounds."""
    print(f"cases                {s['cases']} in {s['seconds']:.1f} s (seed {seed})")
    print("outcomes             " + ", ".join(f"{k} {n}" for k, n in s["kinds"].most_common()))
    print(f"distinct outcomes    {len(s['details'])} ({details})")
    print(f"escapes              {len(s['escapes'])} (exceptions of other types, or accepted values that break the oracle)")
    print(f"multi-line messages  {len(s['multiline'])} (a documented error whose message is not one line)")
    print(f"slowest case         {s['slowest'][0] * 1000:.1f} ms (case {s['slowest'][1]}); "
          f"largest peak {s['peak'][0] / 2**20:.1f} MiB (case {s['peak'][1]}, {s['traced']} cases traced); over "
          f"{slow_s:.0f} s or {peak_mib} MiB: {s['over']}")
    print("most frequent        " + "; ".join(f"{k} {n}" for k, n in s["details"].most_common(8)))
    if s["escapes"]:
        print(f"first escape (case {s['escapes'][0][0]}):\n{s['escapes'][0][1]}")
    if s["multiline"]:
        print(f"first multi-line message (case {s['multiline'][0][0]}): {s['multiline'][0][1]}")
    return 1 if s["escapes"] or s["multiline"] or s["over"] else 0
