"""The kit's ``vera-ref`` subcommands: ``conformance`` and ``conformance-vectors``
(entry points of the group ``vera_ref.commands``, README "Command line")."""
from __future__ import annotations

import argparse
import json

from vera_ref.cli import Command
from vera_ref.resolve import UsageError


def _run_conformance(args: argparse.Namespace) -> int:
    from .runner import main_args
    return main_args(args)


def _setup_conformance(p: argparse.ArgumentParser) -> None:
    from .runner import add_arguments
    add_arguments(p)


def _read_json(path: str, what: str) -> object:
    try:
        with open(path, "rb") as f:
            return json.loads(f.read(1 << 26))  # 64 MiB: far above any results file of spec 6
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"{what} {path}: not a JSON file ({type(exc).__name__})") from None


def _run_vectors(args: argparse.Namespace) -> int:
    from vera_ref.atomic import atomic_write

    from .vectors_runner import check_results, template
    if args.template:
        text = json.dumps(template(), indent=1).encode()
        atomic_write(args.template, lambda f: f.write(text))
        print(f"wrote {args.template}: fill in your results, then run --results")
        return 0
    results = _read_json(args.results, "--results")
    rows = check_results(results)
    for tid, status, detail in rows:
        if status != "passed":
            print(f"{status.upper():8} {tid}  {detail}")
    n = {s: sum(r[1] == s for r in rows) for s in ("passed", "failed", "skipped")}
    print(f"{results.get('implementation') or 'implementation'}: {n['passed']} passed, {n['failed']} failed, "
          f"{n['skipped']} skipped")
    if not n["passed"] and not n["failed"]:  # a run that checked nothing is an error, never a silent success
        raise UsageError(f"--results {args.results}: no result to check (every section empty or missing); "
                         "fill in the template first")
    return 1 if n["failed"] else 0


def _setup_vectors(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--template", metavar="FILE", help="write a results skeleton with every vector's tcId")
    g.add_argument("--results", metavar="FILE", help="check a filled-in results file")


CONFORMANCE = Command(
    "conformance", "check an implementation against the spec, with hypothesis",
    "Run the conformance checks (generator, forward, backward, merge, unmerge, files) against the "
    "implementation named by --impl module:factory (a module in the current folder is found), per device "
    "and dtype, with the tolerances of spec 5.2; prints a repro for every failure and ends with "
    "'N passed, N failed'.",
    _setup_conformance, _run_conformance)

CONFORMANCE_VECTORS = Command(
    "conformance-vectors", "check results of an implementation in any language against spec/vectors",
    "For implementations outside Python: write a results template (--template), fill it from your "
    "implementation, and check it (--results) against spec/vectors (spec 6).",
    _setup_vectors, _run_vectors)
