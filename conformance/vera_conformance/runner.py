"""Run the conformance checks against one implementation (DESIGN 6).

    vera-ref conformance --impl vera_conformance.impls.reference:make \\
        --device cpu,cuda --dtype float32,float16,bfloat16 --max-examples 50 --json-report report.json

Test ids are ``<check>_<device>`` or ``<check>[<dtype>]_<device>``. A capability the
implementation does not claim, a device that is absent, or a (device, dtype) it does
not support is skipped with its reason. ``--skips FILE`` / ``--xfails FILE`` list test
ids, one a line, ``# reason`` after; an entry without ``[`` may be an fnmatch pattern
(``files_*``), one with ``[`` must be a whole id (``merge[float32]_cpu``). Every failure prints a
command that replays the failing case; the run ends with ``N passed, N failed``.
"""
from __future__ import annotations

import argparse
import datetime
import fnmatch
import json
import shlex
import sys
from dataclasses import asdict, dataclass

from .checks import CHECKS, Check, Outcome
from .protocol import DEVICES, DTYPES, Implementation, load_implementation


@dataclass
class Result:
    id: str
    check: str
    level: str
    device: str
    dtype: str | None
    status: str  # passed | failed | skipped | xfailed | xpassed
    reason: str
    examples: int
    worst_ratio: float | None
    tolerance: dict | None
    case: dict | None
    repro: str | None


def _device_present(device: str) -> str | None:
    if device == "cpu":
        return None
    try:
        import torch
    except ImportError:
        return "torch is not installed, so no CUDA device can be found"
    return None if torch.cuda.is_available() else "no CUDA device on this machine"


def _listed(tid: str, patterns: list[tuple[str, str]]) -> str | None:
    """The reason of the first entry naming ``tid``: exactly, or as an fnmatch pattern ('forward*')."""
    for pat, reason in patterns:
        if tid == pat or ("[" not in pat and fnmatch.fnmatchcase(tid, pat)):
            return reason
    return None


def _patterns(path: str | None) -> list[tuple[str, str]]:
    if not path:
        return []
    out = []
    with open(path) as f:
        for line in f:
            pat, _, reason = line.partition("#")
            if pat.strip():
                out.append((pat.strip(), reason.strip() or f"listed in {path}"))
    return out


def plan(impl: Implementation, devices: list[str], dtypes: list[str], only: list[str] | None = None):
    """[(test id, check, device, dtype or None, skip reason or None)]"""
    items = []
    for device in devices:
        absent = _device_present(device)
        for chk in CHECKS:
            if only and chk.name not in only:
                continue
            for dtype in (dtypes if chk.per_dtype else [None]):
                tid = f"{chk.name}[{dtype}]_{device}" if dtype else f"{chk.name}_{device}"
                reason = None
                if chk.capability not in impl.capabilities:
                    reason = f"{impl.name} does not claim the '{chk.capability}' capability"
                elif absent:
                    reason = absent
                elif chk.dtypes and dtype not in chk.dtypes:
                    reason = f"{chk.doc} has cases in {' and '.join(chk.dtypes)} only"
                elif not impl.supports(device, dtype or "float32"):
                    reason = f"{impl.name} does not support device {device} with dtype {dtype or 'float32'}"
                items.append((tid, chk, device, dtype, reason))
    return items


def _repro(impl_spec: str, chk: Check, device: str, dtype: str | None, case: dict | None) -> str:
    cmd = ["vera-ref", "conformance", "--impl", impl_spec, "--only", chk.name, "--device", device]
    if dtype:
        cmd += ["--dtype", dtype]
    if case is not None:
        cmd += ["--case", json.dumps(case, sort_keys=True)]
    return " ".join(shlex.quote(c) for c in cmd)


def run_case(impl: Implementation, chk: Check, device: str, dtype: str | None, case: dict) -> Outcome:
    """Replay one case spec (from a repro) instead of searching."""
    from hypothesis import strategies as st
    from . import checks as C
    if chk.name in ("projection",):
        args = tuple(int(a) for a in case["args"])
        real = C.projection_args
        C.projection_args = st.just(args)
        try:
            return chk.run(impl, device, dtype or "float32", 1)
        finally:
            C.projection_args = real
    real = C.case_specs
    C.case_specs = lambda dropout=True: st.just(case)
    try:
        return chk.run(impl, device, dtype or "float32", 1)
    finally:
        C.case_specs = real


def run(impl: Implementation, impl_spec: str, devices: list[str], dtypes: list[str], max_examples: int = 50,
        only: list[str] | None = None, skips: str | None = None, xfails: str | None = None,
        case: dict | None = None, echo=print) -> list[Result]:
    skip_pats, xfail_pats = _patterns(skips), _patterns(xfails)
    results = []
    for tid, chk, device, dtype, reason in plan(impl, devices, dtypes, only):
        listed = _listed(tid, skip_pats)
        if reason or listed:
            out = Outcome("skipped", reason or f"skips file: {listed}")
        elif case is not None:
            out = run_case(impl, chk, device, dtype, case)
        else:
            try:
                out = chk.run(impl, device, dtype or "float32", max_examples)
            except Exception as exc:  # an implementation that crashes outside a property check
                out = Outcome("failed", f"{type(exc).__name__}: {exc}")
        status = out.status
        xf = _listed(tid, xfail_pats)
        if xf is not None and status in ("passed", "failed"):
            status = "xfailed" if status == "failed" else "xpassed"
        repro = _repro(impl_spec, chk, device, dtype, out.case) if status in ("failed", "xfailed") else None
        res = Result(tid, chk.name, chk.level, device, dtype, status, out.reason if status != "xpassed" else
                     f"expected to fail ({xf}) but passed", out.examples, out.worst_ratio, out.tolerance, out.case,
                     repro)
        results.append(res)
        line = f"{status.upper():8} {tid}"
        if res.worst_ratio is not None and status == "passed":
            line += f"  (worst error {res.worst_ratio:.3g} of the bound, {res.examples} examples)"
        if status != "passed":
            line += f"  {res.reason}"
        echo(line)
        if repro:
            echo(f"         repro: {repro}")
    return results


def summary(results: list[Result]) -> dict:
    return {s: sum(r.status == s for r in results) for s in ("passed", "failed", "skipped", "xfailed", "xpassed")}


def report(results: list[Result], impl: Implementation, path: str) -> None:
    import vera_ref
    doc = {"implementation": impl.name, "spec_version": vera_ref.SPEC_VERSION, "kit": f"vera-ref {vera_ref.__version__}",
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "capabilities": sorted(impl.capabilities), "summary": summary(results),
           "results": [asdict(r) for r in results]}
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)


def final_line(results: list[Result]) -> str:
    s = summary(results)
    line = f"{s['passed']} passed, {s['failed'] + s['xpassed']} failed, {s['skipped']} skipped"
    return line + (f", {s['xfailed']} xfailed" if s["xfailed"] else "")


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--impl", help="module:factory of the implementation (default: $VERA_IMPL)")
    ap.add_argument("--device", default="cpu", help=f"comma-separated, of {', '.join(DEVICES)} (default cpu)")
    ap.add_argument("--dtype", default="float32", help=f"comma-separated, of {', '.join(DTYPES)} (default float32)")
    ap.add_argument("--max-examples", type=int, default=50, help="hypothesis examples per property (default 50)")
    ap.add_argument("--only", help="comma-separated check names: " + ", ".join(c.name for c in CHECKS))
    ap.add_argument("--json-report", metavar="FILE", help="write every result, tolerance and repro as JSON")
    ap.add_argument("--skips", metavar="FILE", help="test ids (patterns) to skip, with '# reason'")
    ap.add_argument("--xfails", metavar="FILE", help="test ids (patterns) expected to fail, with '# reason'")
    ap.add_argument("--case", help="replay one case (the JSON a failure's repro prints)")


def main_args(args: argparse.Namespace) -> int:
    impl = load_implementation(args.impl)
    spec = args.impl or __import__("os").environ.get("VERA_IMPL", "")
    devices = [d for d in args.device.split(",") if d]
    dtypes = [d for d in args.dtype.split(",") if d]
    for d in devices:
        if d not in DEVICES:
            raise SystemExit(f"unknown device {d!r} (known: {', '.join(DEVICES)})")
    for d in dtypes:
        if d not in DTYPES:
            raise SystemExit(f"unknown dtype {d!r} (known: {', '.join(DTYPES)})")
    print(f"vera conformance: {impl.name}; capabilities {', '.join(sorted(impl.capabilities)) or 'none'}; "
          f"devices {', '.join(devices)}; dtypes {', '.join(dtypes)}", flush=True)
    results = run(impl, spec, devices, dtypes, args.max_examples, args.only.split(",") if args.only else None,
                  args.skips, args.xfails, json.loads(args.case) if args.case else None,
                  echo=lambda s: print(s, flush=True))
    if args.json_report:
        report(results, impl, args.json_report)
    print(final_line(results))
    s = summary(results)
    return 1 if s["failed"] or s["xpassed"] else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="vera-conformance", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    return main_args(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
