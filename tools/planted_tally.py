#!/usr/bin/env python
"""How many planted bugs the conformance kit catches (issue 24; README "How many planted bugs the
kit catches").

    python tools/planted_tally.py --at HEAD --json tally.json  # every bug, the kit as committed (~5 min)
    python tools/planted_tally.py --max-examples 5            # quicker, the working tree's kit
    python tools/planted_tally.py --only p01,p13 --all        # two bugs, every check

Each planted bug (``tools/planted/p*.py``: a realistic mistake in a temporary copy of the shipped
reference or vera_torch, see ``tools/planted/_plant.py``) goes through the kit exactly as a user's
implementation does: ``vera-ref conformance --impl tools/planted/<bug>.py:make --max-examples N``
in a fresh process, with the kit's defaults otherwise (every check, every dtype, CPU, 50 examples),
under a time bound per bug. A bug is

    caught    some check failed: the first failing check is named, and the bug's run stops there
              (``--all``: every check runs, and every failing one is named)
    escaped   every check passed or was skipped
    timeout   no check had failed when its time ran out
    error     the kit refused to run it (the message is shown), e.g. a stale plant

Each bug names its baseline (``BASE``, default ``b_reference``): the unmodified code it was planted
in, run through the same copy-and-import path (``tools/planted/b_*.py``). A test id that fails on
the baseline too is the kit's or the shipped code's failure, not the bug's: a bug is caught only by
ids that pass on its baseline (those baseline failures are listed apart). Controls (``EXPECT =
"pass"``) are conforming variants: for them a failure is a false alarm. A bug module may carry
``WHY_ESCAPES``, the explanation printed when it escapes.
Not part of ``make test`` (tests/conformance/test_planted.py runs a fast subset).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLANTED = ROOT / "tools" / "planted"
sys.path.insert(0, str(PLANTED))

from _plant import load_bug  # noqa: E402

LINE = re.compile(r"^(PASSED|FAILED|SKIPPED|XFAILED|XPASSED)\s+(\S+)(.*)$")


@dataclass
class Tally:
    bug: str
    clause: str
    area: str
    expect: str
    result: str  # caught | escaped | timeout | error | passed | false-alarm | fails (a baseline)
    base: str = "b_reference"
    caught_by: list[str] = field(default_factory=list)  # failing test ids that pass on the baseline, in run order
    also_on_base: list[str] = field(default_factory=list)  # failing test ids that fail on the baseline too
    first_reason: str = ""
    checks_run: int = 0
    seconds: float = 0.0
    why_escapes: str = ""
    doc: str = ""


def bugs(only: str | None) -> list[Path]:
    paths = sorted(PLANTED.glob("p[0-9]*.py"))
    if only == "none":
        return []
    if only:
        keys = [k.strip() for k in only.split(",") if k.strip()]
        paths = [p for p in paths if any(p.stem == k or p.stem.startswith(k + "_") for k in keys)]
        if not paths:
            raise SystemExit(f"planted_tally: --only {only}: no bug of {PLANTED} matches")
    return paths


def kit_command(path: Path, max_examples: int, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "vera_ref.cli", "conformance", "--impl", f"{path}:make",
            "--max-examples", str(max_examples), *extra]


def _stop(p: subprocess.Popen) -> None:
    """End the kit's process group (it was started in a session of its own)."""
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()


def run_one(path: Path, max_examples: int, timeout: float, extra: list[str], base_failed=None,
            stop_early: bool = True) -> Tally:
    """One bug through the kit; ``base_failed``: the test ids that failed on its baseline (None: this
    is a baseline run)."""
    mod = load_bug(path)
    doc = " ".join((mod.__doc__ or "").strip().split("\n\n")[0].split())  # the first paragraph
    t = Tally(path.stem, mod.CLAUSE, mod.AREA, mod.EXPECT, "error", getattr(mod, "BASE", "b_reference"), doc=doc,
              why_escapes=getattr(mod, "WHY_ESCAPES", ""))
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    ignore = base_failed or set()
    start = time.monotonic()
    lines: list[str] = []
    expired = threading.Event()
    rc = None
    with tempfile.TemporaryDirectory(prefix="planted-tally-") as cwd:  # no stray files, no module shadowing
        p = subprocess.Popen(kit_command(path, max_examples, extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, cwd=cwd, env=env, start_new_session=True)
        timer = threading.Timer(timeout, lambda: (expired.set(), _stop(p)))
        timer.start()
        try:
            for line in p.stdout:  # the kit prints each result as it finishes
                lines.append(line.rstrip("\n"))
                m = LINE.match(line)
                if (stop_early and base_failed is not None and m and m.group(1) in ("FAILED", "XPASSED")
                        and m.group(2) not in ignore):
                    break  # caught: the rest of the kit cannot uncatch it
            else:
                rc = p.wait()
        finally:
            timer.cancel()
            _stop(p)
    timed_out = expired.is_set()
    out = err = "\n".join(lines)
    t.seconds = round(time.monotonic() - start, 1)
    results = [m.groups() for m in map(LINE.match, out.splitlines()) if m]
    t.checks_run = sum(s in ("PASSED", "FAILED") for s, _, _ in results)
    failed = [(tid, rest.strip()) for s, tid, rest in results if s in ("FAILED", "XPASSED")]
    if base_failed:
        t.also_on_base = [tid for tid, _ in failed if tid in base_failed]
        failed = [(tid, why) for tid, why in failed if tid not in base_failed]
    t.caught_by = [tid for tid, _ in failed]
    t.first_reason = failed[0][1][:400] if failed else ""
    if failed:
        t.result = "caught" if t.expect == "caught" else ("fails" if t.area == "baseline" else "false-alarm")
    elif timed_out:
        t.result = "timeout"
    elif rc in (0, 1) and t.checks_run:
        t.result = "escaped" if t.expect == "caught" else "passed"
    else:
        lines = [s for s in (err or out).strip().splitlines() if s.strip()]
        t.result = "error"
        t.first_reason = (lines[-1] if lines else f"exit {rc}, no output")[:400]
    return t


def checks_of(ids: list[str]) -> list[str]:
    """Check names of test ids (forward[float32]_cpu -> forward), in first-failure order."""
    out = []
    for tid in ids:
        name = re.sub(r"(\[[^\]]*\])?_(cpu|cuda)$", "", tid)
        if name not in out:
            out.append(name)
    return out


def totals(rows: list[Tally]) -> dict:
    planted = [r for r in rows if r.expect == "caught"]
    controls = [r for r in rows if r.expect != "caught" and r.area != "baseline"]
    t = {k: sum(r.result == k for r in planted) for k in ("caught", "escaped", "timeout", "error")}
    t["planted"] = len(planted)
    t["controls"] = len(controls)
    t["controls_passed"] = sum(r.result == "passed" for r in controls)
    t["false_alarms"] = sum(r.result == "false-alarm" for r in controls)
    return t


def table(rows: list[Tally]) -> str:
    lines = ["| bug | clause | area | result | caught by (first failing check first) |", "|---|---|---|---|---|"]
    for r in rows:
        by = ", ".join(checks_of(r.caught_by)) if r.caught_by else (r.first_reason if r.result == "error" else "")
        if r.result == "escaped" and r.also_on_base:
            by = f"(fails only {', '.join(checks_of(r.also_on_base))}, which fail on {r.base} too)"
        lines.append(f"| {r.bug} | {r.clause} | {r.area} | {r.result} | {by} |")
    return "\n".join(lines)


def at_revision(rev: str, argv: list[str]) -> int:
    """Run this script as committed at ``rev``, on the kit as committed at ``rev``: ``git archive``
    into a temporary folder whose packages come first on PYTHONPATH (vera_ref.spec linked to spec/,
    as pyproject maps it), so uncommitted work in the checkout takes no part."""
    keep = []
    skip = False
    for a in argv:  # the same arguments without --at; the --json path as seen from here
        if skip:
            skip = False
        elif a == "--at":
            skip = True
        elif a.startswith("--json="):
            keep.append("--json=" + os.path.abspath(a.split("=", 1)[1]))
        elif keep and keep[-1] == "--json":
            keep.append(os.path.abspath(a))
        elif not a.startswith("--at="):
            keep.append(a)
    commit = subprocess.run(["git", "rev-parse", "--verify", rev + "^{commit}"], capture_output=True, text=True,
                            cwd=ROOT)
    if commit.returncode:
        raise SystemExit(f"planted_tally: --at {rev}: not a commit of {ROOT}")
    with tempfile.TemporaryDirectory(prefix="planted-at-") as tmp:
        archive = subprocess.run(["git", "archive", commit.stdout.strip()], capture_output=True, cwd=ROOT, check=True)
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        (Path(tmp) / "vera_ref" / "spec").symlink_to(Path(tmp) / "spec")
        path = os.pathsep.join(str(Path(tmp) / d) for d in (".", "backends", "conformance"))
        env = dict(os.environ, VERA_PLANTED_AT=commit.stdout.strip(), PYTHONPATH=path)
        print(f"kit as committed at {commit.stdout.strip()} ({rev})", flush=True)
        return subprocess.run([sys.executable, str(Path(tmp) / "tools" / "planted_tally.py"), *keep], env=env,
                              cwd=tmp).returncode


def area_table(rows: list[Tally]) -> str:
    """Planted bugs per area: how many, caught (by which checks), escaped or otherwise."""
    lines = ["| area | planted | caught | first failing check (bugs) | escaped | other |",
             "|---|---|---|---|---|---|"]
    planted = [r for r in rows if r.expect == "caught"]
    for area in dict.fromkeys(r.area for r in planted):
        rs = [r for r in planted if r.area == area]
        by = []
        for r in rs:
            for c in checks_of(r.caught_by)[:1]:
                by.append(c)
        named = ", ".join(f"{c} {by.count(c)}" if by.count(c) > 1 else c for c in dict.fromkeys(by))
        other = [r for r in rs if r.result not in ("caught", "escaped")]
        lines.append(f"| {area} | {len(rs)} | {sum(r.result == 'caught' for r in rs)} | {named} | "
                     f"{sum(r.result == 'escaped' for r in rs)} | "
                     f"{', '.join(f'{r.bug} {r.result}' for r in other) or 0} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated bug names or number prefixes (p01,p13_k_tile_past_4096)")
    ap.add_argument("--max-examples", type=int, default=50,
                    help="hypothesis examples per property (default 50, the kit's)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per bug (default 600)")
    ap.add_argument("--jobs", type=int, default=2, help="bugs run at once (default 2)")
    ap.add_argument("--kit-args", default="", help="more arguments for vera-ref conformance, e.g. '--thorough'")
    ap.add_argument("--all", action="store_true",
                    help="run every check on every bug (default: a bug's run stops at its first catch)")
    ap.add_argument("--at", metavar="REV", help="measure the kit as committed at REV (git archive into a temporary "
                    "folder, first on PYTHONPATH), not the working tree")
    ap.add_argument("--json", metavar="FILE", help="write every bug's result and the totals as JSON")
    args = ap.parse_args(argv)
    if args.at:
        return at_revision(args.at, [a for a in (argv if argv is not None else sys.argv[1:])])
    paths = bugs(args.only)
    extra = args.kit_args.split()
    start = time.monotonic()

    def show(r: Tally) -> None:
        by = ", ".join(checks_of(r.caught_by)) or r.first_reason
        print(f"{r.result.upper():12} {r.bug:40} {r.seconds:6.1f}s  {by[:160]}", flush=True)

    base_of = {p: getattr(load_bug(p), "BASE", "b_reference") for p in paths}
    bases = sorted(set(base_of.values()) | {"b_reference"}, key=lambda b: (b == "b_torch", b))
    paths.sort(key=lambda p: (base_of[p] == "b_torch", p.stem))  # bugs on the slowest baseline last
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        # baselines first (FIFO: each is running or done before any bug task starts); a bug's task
        # waits for its own baseline only
        base_futures = {b: pool.submit(run_one, PLANTED / f"{b}.py", args.max_examples, args.timeout, extra)
                        for b in bases}

        def bug_task(p: Path) -> Tally:
            base = base_futures[base_of[p]].result()
            return run_one(p, args.max_examples, args.timeout, extra, set(base.caught_by), not args.all)

        futures = [pool.submit(bug_task, p) for p in paths]
        base_rows = []
        for b, f in base_futures.items():
            r = f.result()
            base_rows.append(r)
            show(r)
            if r.result != "passed":
                print(f"  baseline {r.bug} ({r.result}) fails {', '.join(r.caught_by) or r.first_reason}: those ids "
                      "do not count as catching a bug planted in it", flush=True)
        rows = []
        for f in futures:
            rows.append(f.result())
            show(rows[-1])
    rows = base_rows + rows
    tot = totals(rows)
    wall = round(time.monotonic() - start, 1)
    print()
    print(table(rows))
    print()
    print(area_table(rows))
    print()
    print(f"planted bugs: {tot['planted']}; caught {tot['caught']}, escaped {tot['escaped']}, timeout "
          f"{tot['timeout']}, error {tot['error']}; controls: {tot['controls_passed']} of {tot['controls']} passed, "
          f"{tot['false_alarms']} false alarms ({wall} s wall, --max-examples {args.max_examples})")
    for r in rows:
        if r.result == "escaped":
            print(f"escaped {r.bug}: {r.why_escapes or '(no explanation recorded)'}")
    if args.json:
        at = os.environ.get("VERA_PLANTED_AT")  # set by --at: this is the archive of that commit
        commit = at or subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                      cwd=ROOT).stdout.strip()
        dirty = not at and subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                          capture_output=True, text=True, cwd=ROOT).stdout.strip()
        doc = {"commit": commit, "working_tree": "modified" if dirty else "as committed",
               "max_examples": args.max_examples, "timeout": args.timeout, "kit_args": extra,
               "wall_seconds": wall, "totals": tot, "bugs": [asdict(r) for r in rows]}
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
