"""The kit's ``vera-ref`` subcommands: ``conformance`` and ``conformance-vectors``
(entry points of the group ``vera_ref.commands``, README "Command line")."""
from __future__ import annotations

import argparse
import json
import os

from vera_ref.cli import Command, input_path, output_path
from vera_ref.resolve import UsageError, resolve_object

# exit codes (README "Command line"): every option that cannot be used as typed is a UsageError here, before
# the runner starts (exit 2: nothing was run); what the runner raises after that is a ConformanceError (the
# implementation or a file refused, nothing checked: exit 1), and a failed check returns 1


def _names(value: str, known, option: str, what: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    bad = [n for n in names if n not in known]
    if bad:
        raise UsageError(f"{option}: unknown {what} {', '.join(map(repr, bad))} (known: {', '.join(known)})")
    if not names:
        raise UsageError(f"{option} names no {what} (known: {', '.join(known)})")
    return names


def check_usage(args: argparse.Namespace) -> None:
    """Every mistake on the command line, found before the implementation's factory is called."""
    from .checks import CHECKS
    from .protocol import DEVICES, DTYPES
    spec = args.impl or os.environ.get("VERA_IMPL")
    if not spec:
        raise UsageError("name an implementation with --impl module:factory or --impl path/to/file.py:factory "
                         "(or VERA_IMPL), e.g. vera_conformance.impls.reference:make")
    resolve_object(spec, "--impl")  # imports it once; the runner finds the same module again
    _names(args.device, DEVICES, "--device", "device")
    if args.dtype is not None:
        _names(args.dtype, DTYPES, "--dtype", "dtype")
    only = _names(args.only, [c.name for c in CHECKS], "--only", "check") if args.only is not None else None
    if args.max_examples < 1:
        raise UsageError(f"--max-examples must be >= 1, got {args.max_examples}")
    if args.case is not None:
        try:
            case = json.loads(args.case)
        except (ValueError, RecursionError) as exc:
            raise UsageError(f"--case is not JSON ({type(exc).__name__}: {str(exc)[:200]})") from None
        if not isinstance(case, dict):
            raise UsageError("--case must be a JSON object (the one a failure's repro prints)")
        if not only or len(only) != 1:
            raise UsageError("--case replays one check's case: name that check with --only")
    for option in ("--skips", "--xfails"):
        path = getattr(args, option[2:])
        if path is not None and not os.path.isfile(input_path(path, option)):
            from .protocol import ConformanceError
            raise ConformanceError(f"{option} {path}: is a folder or special file, not a list of test ids")
    if args.json_report:
        output_path(args.json_report, "--json-report")


def _run_conformance(args: argparse.Namespace) -> int:
    from .runner import main_args
    check_usage(args)
    return main_args(args)


def _setup_conformance(p: argparse.ArgumentParser) -> None:
    from .runner import add_arguments
    add_arguments(p)


def _read_json(path: str, what: str) -> object:
    from .protocol import ConformanceError
    input_path(path, what)
    if os.path.isdir(path):
        raise ConformanceError(f"{what} {path}: is a folder, not a JSON file")
    try:
        with open(path, "rb") as f:
            return json.loads(f.read(1 << 26))  # 64 MiB: far above any results file of spec 6
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ConformanceError(f"{what} {path}: not a JSON file ({type(exc).__name__})") from None


def _run_vectors(args: argparse.Namespace) -> int:
    from vera_ref.atomic import atomic_write

    from .protocol import ConformanceError
    from .vectors_runner import check_results, template
    if args.template:
        output_path(args.template, "--template")
        text = json.dumps(template(), indent=1).encode()
        atomic_write(args.template, lambda f: f.write(text))
        print(f"wrote {args.template}: fill in your results, then run --results")
        return 0
    results = _read_json(args.results, "--results")
    if not isinstance(results, dict):
        raise ConformanceError(f"--results {args.results}: must be a JSON object (write one with --template)")
    rows = check_results(results)
    for tid, status, detail in rows:
        if status != "passed":
            print(f"{status.upper():8} {tid}  {detail}")
    n = {s: sum(r[1] == s for r in rows) for s in ("passed", "failed", "skipped")}
    print(f"{results.get('implementation') or 'implementation'}: {n['passed']} passed, {n['failed']} failed, "
          f"{n['skipped']} skipped")
    if not n["passed"] and not n["failed"]:  # a run that checked nothing is an error, never a silent success
        raise ConformanceError(f"--results {args.results}: no result to check (every section empty or missing); "
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
    "and dtype (all four by default: the ones it does not declare are probed first), with the tolerances of "
    "spec 5.2; --thorough adds real-size cases. Prints a repro for every failure and ends with "
    "'N passed, N failed'.",
    _setup_conformance, _run_conformance)

CONFORMANCE_VECTORS = Command(
    "conformance-vectors", "check results of an implementation in any language against spec/vectors",
    "For implementations outside Python: write a results template (--template), fill it from your "
    "implementation, and check it (--results) against spec/vectors (spec 6).",
    _setup_vectors, _run_vectors)
