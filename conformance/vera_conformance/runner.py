"""Run the conformance checks against one implementation (spec 5.3).

    vera-ref conformance --impl vera_conformance.impls.reference:make \\
        --device cpu,cuda --dtype float32,float16,bfloat16 --max-examples 50 --json-report report.json

Test ids are ``<check>_<device>`` or ``<check>[<dtype>]_<device>``. A capability the
implementation does not claim, a device that is absent, or a (device, dtype) it does
not support is skipped with its reason. ``--skips FILE`` / ``--xfails FILE`` list test
ids, one a line, ``# reason`` after; an entry without ``[`` may be an fnmatch pattern
(``files_*``), one with ``[`` must be a whole id (``merge[float32]_cpu``). Every failure prints a
command that replays the failing case (and says when the failure depends on earlier calls);
the run ends with ``N passed, N failed``.

Dtypes: without ``--dtype`` the four dtypes of spec 4.5 (float32, float16, bfloat16, float64) are
checked whatever the implementation declares, plus any other precision it declares (tf32). A
declared dtype is checked unconditionally; one it does not declare is first *probed* with a small
forward (or merge, backward, train) and reported "not supported" (skipped) only when the probe
raises an error saying so (NotImplementedError, or a message with "not supported", "unsupported",
"not implemented") or returns values of another dtype (values not representable in float16/
bfloat16, or only float32 values for float64); any other result is checked like a declared dtype.
``--thorough`` adds real-size cases to every layer check (strategies.THOROUGH_EXPLICIT) and the
larger numerics cases (checks_numeric.THOROUGH).
"""
from __future__ import annotations

import argparse
import datetime
import fnmatch
import json
import os
import re
import shlex
import sys
from dataclasses import asdict, dataclass

import numpy as np

from vera_ref.errors import VeraError

from . import strategies as S
from .checks import CHECKS, Check, Outcome, _build, _crash
from .protocol import DEVICES, DTYPES, ConformanceError, Implementation, load_implementation


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
    note: str = ""


# what an implementation computes with (protocol.py); declarations (name, dtypes, scale, ...) are not
PROTOCOL_METHODS = ("projection", "philox", "forward", "backward", "merge", "unmerge", "train_steps",
                    "load_adapter", "save_adapter", "save_layer", "load_layer", "quantized", "merged_forward")


class Watched:
    """The implementation as a check sees it, counting calls of its protocol methods: a check that
    called none of them ran none of the implementation's code, and is never reported as passed."""

    def __init__(self, impl: Implementation) -> None:
        self.__dict__["_impl"] = impl
        self.__dict__["calls"] = 0

    def __getattr__(self, name: str):
        attr = getattr(self._impl, name)
        if name not in PROTOCOL_METHODS or not callable(attr):
            return attr

        def called(*args, **kwargs):
            self.__dict__["calls"] += 1
            return attr(*args, **kwargs)
        return called

    def __setattr__(self, name: str, value) -> None:
        setattr(self._impl, name, value)


def _ran_nothing(out: Outcome, watched: Watched, impl: Implementation) -> Outcome:
    """A pass of a check that called no method of the implementation becomes a failure."""
    if out.status != "passed" or watched.calls:
        return out
    return Outcome("failed", f"the check called no method of {impl.name} ({', '.join(PROTOCOL_METHODS)}): "
                             "a check that ran nothing is not a pass (a bug of the kit)", out.examples,
                   tolerance=out.tolerance)


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


# spec 4.5's dtypes: tried even when the implementation does not declare them (module doc)
PROBED = ("float32", "float16", "bfloat16", "float64")
_UNSUPPORTED = re.compile(r"not supported|unsupported|not implemented|does not support|not understood", re.I)


def default_dtypes(impl: Implementation) -> list[str]:
    """What a run without --dtype checks: the four dtypes, plus other precisions it declares (tf32)."""
    return [d for d in DTYPES if d in PROBED or d in impl.dtypes]


def probed(impl: Implementation, dtype: str | None) -> bool:
    """True when ``dtype`` is checked without being declared: probe_dtype decides first."""
    return dtype is not None and dtype in PROBED and dtype not in impl.dtypes


def probe_dtype(impl: Implementation, device: str, dtype: str) -> str | None:
    """None when ``impl`` computes in ``dtype`` (its checks run); else why it does not (a skip):
    the probe (a small case through its first claimed layer method) raised an error saying the
    dtype is unsupported, or returned values of another dtype. Any other error is the checks' to
    report, with its frame."""
    layout = sorted(getattr(impl, "layouts", None) or ("linear",))[-1]  # linear when it has it
    spec = S._spec(S._size(5, 24, 12, 3), seed=11, values_seed=5, layout=layout)
    c = _build(impl, spec, dtype, device)
    caps = impl.capabilities
    calls = [("forward", lambda: impl.forward(c)), ("merge", lambda: impl.merge(c)),
             ("backward", lambda: impl.backward(c)[0]), ("train", lambda: impl.train_steps(c, 2.0**-4, 1).lambda_b)]
    what, call = next(((w, f) for w, f in calls if w in caps), (None, None))
    if call is None:
        return None
    try:
        got = np.asarray(call(), dtype=np.float64)
    except Exception as exc:
        if isinstance(exc, NotImplementedError) or _UNSUPPORTED.search(str(exc)):
            return f"{impl.name} does not support {dtype} (not declared; probed: its {what} raised {_crash(exc)})"
        return None
    from vera_ref.dtypes import round_to
    finite = got[np.isfinite(got)]
    if dtype in ("float16", "bfloat16") and not np.array_equal(round_to(finite, dtype).astype(np.float64), finite):
        return (f"{impl.name} does not support {dtype} (not declared; probed: its {what} returned values that are "
                f"not {dtype}: it computes in another dtype)")
    if dtype == "float64" and finite.size and np.array_equal(finite.astype(np.float32).astype(np.float64), finite):
        return (f"{impl.name} does not support float64 (not declared; probed: its {what} returned float32 values "
                "only)")
    return None


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
                elif probed(impl, dtype) and device not in getattr(impl, "devices", ("cpu",)):
                    reason = f"{impl.name} does not support device {device}"
                elif not probed(impl, dtype) and not impl.supports(device, dtype or "float32"):
                    reason = f"{impl.name} does not support device {device} with dtype {dtype or 'float32'}"
                elif chk.needs is not None:
                    reason = chk.needs(impl)
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
    """Replay one case (from a repro) instead of searching."""
    missing = [k for k in chk.case_keys if k not in case]
    if missing:
        raise ConformanceError(f"--case does not describe a case of the check {chk.name!r} "
                               f"(missing {', '.join(missing)}; pass the JSON its repro printed)")
    try:
        return chk.run(impl, device, dtype or "float32", 1, case=case)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ConformanceError(f"--case does not describe a case of the check {chk.name!r} "
                               f"({type(exc).__name__}: {exc})") from None


def run_check(impl: Implementation, chk: Check, device: str, dtype: str | None, max_examples: int,
              case: dict | None = None) -> Outcome:
    """One check (or the replay of one case) with the implementation watched: a crash outside a
    property is a failure, and a pass that called none of the implementation's methods is not a pass."""
    watched = Watched(impl)
    if case is not None:
        return _ran_nothing(run_case(watched, chk, device, dtype, case), watched, impl)
    try:
        out = chk.run(watched, device, dtype or "float32", max_examples)
    except Exception as exc:  # an implementation that crashes outside a property check
        out = Outcome("failed", _crash(exc))
    return _ran_nothing(out, watched, impl)


def _fresh(impl: Implementation, impl_spec: str):
    """A new implementation object, for telling a state-dependent failure from a plain one."""
    try:
        return load_implementation(impl_spec)
    except Exception:
        try:
            return type(impl)()
        except Exception:
            return None


def _state_note(impl, impl_spec, chk, device, dtype, out: Outcome) -> str:
    """spec 5.4: a failure whose case passes on a fresh implementation depends on earlier calls."""
    if out.case is None or chk.name == "stateless":
        return ""
    fresh = _fresh(impl, impl_spec)
    if fresh is None:
        return ""
    try:
        again = chk.run(fresh, device, dtype or "float32", 1, case=out.case)
    except Exception:
        return ""
    if again.status == "passed":
        return (" [state-dependent: this case passes on a fresh implementation; it failed after "
                f"{out.examples} earlier calls in one process (a cache?), so its repro alone may pass]")
    return ""


def run(impl: Implementation, impl_spec: str, devices: list[str], dtypes: list[str], max_examples: int = 50,
        only: list[str] | None = None, skips: str | None = None, xfails: str | None = None,
        case: dict | None = None, echo=print, thorough: bool = False) -> list[Result]:
    """Every planned check; ``thorough``: the larger cases of --thorough (module doc)."""
    with S.level(thorough):
        return _run(impl, impl_spec, devices, dtypes, max_examples, only, skips, xfails, case, echo)


def _run(impl, impl_spec, devices, dtypes, max_examples, only, skips, xfails, case, echo) -> list[Result]:
    skip_pats, xfail_pats = _patterns(skips), _patterns(xfails)
    results, probes = [], {}
    for tid, chk, device, dtype, reason in plan(impl, devices, dtypes, only):
        listed = _listed(tid, skip_pats)
        if not reason and not listed and probed(impl, dtype):
            if (device, dtype) not in probes:
                try:
                    probes[device, dtype] = probe_dtype(impl, device, dtype)
                except Exception as exc:  # the kit's own case could not be built: say so, check anyway
                    probes[device, dtype] = None
                    echo(f"         probe of {dtype} on {device} failed in the kit: {_crash(exc)}")
            reason = probes[device, dtype]
        if reason or listed:
            out = Outcome("skipped", reason or f"skips file: {listed}")
        elif case is not None:
            out = run_check(impl, chk, device, dtype, 1, case)
        else:
            out = run_check(impl, chk, device, dtype, max_examples)
            if out.status == "failed":
                out.reason += _state_note(impl, impl_spec, chk, device, dtype, out)
        status = out.status
        xf = _listed(tid, xfail_pats)
        if xf is not None and status in ("passed", "failed"):
            status = "xfailed" if status == "failed" else "xpassed"
        repro = _repro(impl_spec, chk, device, dtype, out.case) if status in ("failed", "xfailed") else None
        res = Result(tid, chk.name, chk.level, device, dtype, status, out.reason if status != "xpassed" else
                     f"expected to fail ({xf}) but passed", out.examples, out.worst_ratio, out.tolerance, out.case,
                     repro, out.note)
        results.append(res)
        line = f"{status.upper():8} {tid}"
        if res.worst_ratio is not None and status == "passed":
            line += f"  (worst error {res.worst_ratio:.3g} of the bound, {res.examples} examples)"
        elif status == "passed" and res.examples:
            line += f"  ({res.examples} examples)"
        if status != "passed":
            line += f"  {res.reason}"
        elif res.note:
            line += f"  note: {res.note}"
        echo(line)
        if repro:
            echo(f"         repro: {repro}")
    return results


def summary(results: list[Result]) -> dict:
    return {s: sum(r.status == s for r in results) for s in ("passed", "failed", "skipped", "xfailed", "xpassed")}


def report_doc(results: list[Result], impl: Implementation) -> dict:
    import vera_ref
    from vera_ref.metadata import SPEC_TEXT_VERSION
    # the spec text the kit checks against, and the file profile its writers write (spec/README.md)
    return {"implementation": impl.name, "spec_version": SPEC_TEXT_VERSION, "file_profile": vera_ref.SPEC_VERSION,
            "kit": f"vera-ref {vera_ref.__version__}",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "capabilities": sorted(impl.capabilities), "dtypes": sorted(impl.dtypes),
            "probed_dtypes": sorted({r.dtype for r in results if r.dtype and probed(impl, r.dtype)}),
            "declarations": {"layouts": sorted(getattr(impl, "layouts", ())), "dropout": getattr(impl, "dropout", True),
                             "adapter_scale": None if getattr(impl, "adapter_scale", None) is None
                             else {str(r): impl.scale(r) for r in (1, 8, 64, 256)},
                             "generator": getattr(impl, "generator", "philox4x32-10")},
            "summary": summary(results), "results": [asdict(r) for r in results]}


def check_report_path(path: str) -> None:
    """Refuse an unwritable --json-report path before the run, not after it."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ConformanceError(f"--json-report {path}: is a folder, not a file")
    if not os.path.isdir(folder):
        raise ConformanceError(f"--json-report {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise ConformanceError(f"--json-report {path}: not writable")


def report(results: list[Result], impl: Implementation, path: str) -> None:
    from vera_ref.atomic import atomic_write
    text = json.dumps(report_doc(results, impl), indent=1).encode()
    atomic_write(path, lambda f: f.write(text))


def final_line(results: list[Result]) -> str:
    s = summary(results)
    line = f"{s['passed']} passed, {s['failed'] + s['xpassed']} failed, {s['skipped']} skipped"
    return line + (f", {s['xfailed']} xfailed" if s["xfailed"] else "")


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--impl", help="module:factory of the implementation (default: $VERA_IMPL); "
                                   "the module is looked up in the current folder first")
    ap.add_argument("--device", default="cpu", help=f"comma-separated, of {', '.join(DEVICES)} (default cpu)")
    ap.add_argument("--dtype", default=None, help=f"comma-separated, of {', '.join(DTYPES)} (default: float32, "
                                                  "float16, bfloat16, float64, the undeclared ones probed, and "
                                                  "any other precision the implementation declares)")
    ap.add_argument("--max-examples", type=int, default=50, help="hypothesis examples per property (default 50)")
    ap.add_argument("--thorough", action="store_true",
                    help="more and larger cases: real layer sizes (in and out up to 16384, r 1024) in every layer "
                         "check and the larger numerics cases (minutes, not seconds)")
    ap.add_argument("--only", help="comma-separated check names: " + ", ".join(c.name for c in CHECKS))
    ap.add_argument("--json-report", metavar="FILE", help="write every result, tolerance and repro as JSON")
    ap.add_argument("--skips", metavar="FILE", help="test ids (patterns) to skip, with '# reason'")
    ap.add_argument("--xfails", metavar="FILE", help="test ids (patterns) expected to fail, with '# reason'")
    ap.add_argument("--case", help="replay one case (the JSON a failure's repro prints; needs --only)")


def _names(value: str | None, known, what: str) -> list[str]:
    names = [v.strip() for v in (value or "").split(",") if v.strip()]
    bad = [n for n in names if n not in known]
    if bad:
        raise ConformanceError(f"unknown {what} {', '.join(map(repr, bad))} (known: {', '.join(known)})")
    return names


def main_args(args: argparse.Namespace) -> int:
    """``vera-ref conformance``: every mistake is one ConformanceError line; a run that checked
    nothing is an error; exit 1 when a check failed."""
    impl = load_implementation(args.impl)
    spec = args.impl or os.environ.get("VERA_IMPL", "")
    devices = _names(args.device, DEVICES, "device")
    dtypes = _names(args.dtype, DTYPES, "dtype") if args.dtype else default_dtypes(impl)
    only = _names(args.only, [c.name for c in CHECKS], "check") if args.only is not None else None
    if args.only is not None and not only:
        raise ConformanceError("--only names no check (known: " + ", ".join(c.name for c in CHECKS) + ")")
    if not devices or not dtypes:
        raise ConformanceError("no device or no dtype to check")
    if args.max_examples < 1:
        raise ConformanceError(f"--max-examples must be >= 1, got {args.max_examples}")
    case = None
    if args.case:
        try:
            case = json.loads(args.case)
        except ValueError as exc:
            raise ConformanceError(f"--case is not JSON ({type(exc).__name__}: {exc})") from None
        if not isinstance(case, dict):
            raise ConformanceError("--case must be a JSON object (the one a failure's repro prints)")
        if not only or len(only) != 1:
            raise ConformanceError("--case replays one check's case: name that check with --only")
    for path in (args.skips, args.xfails):
        if path and not os.path.isfile(path):
            raise ConformanceError(f"{path}: no such file")
    if args.json_report:
        check_report_path(args.json_report)
    undeclared = [d for d in dtypes if probed(impl, d)]
    print(f"vera conformance: {impl.name}; capabilities {', '.join(sorted(impl.capabilities)) or 'none'}; "
          f"devices {', '.join(devices)}; dtypes {', '.join(dtypes)}"
          + (f" ({', '.join(undeclared)} not declared: probed)" if undeclared else "")
          + ("; thorough" if getattr(args, "thorough", False) else ""), flush=True)
    results = run(impl, spec, devices, dtypes, args.max_examples, only, args.skips, args.xfails, case,
                  echo=lambda s: print(s, flush=True), thorough=getattr(args, "thorough", False))
    if args.json_report:
        report(results, impl, args.json_report)
    print(final_line(results))
    s = summary(results)
    if not s["passed"] and not s["failed"] and not s["xfailed"] and not s["xpassed"]:
        raise ConformanceError("nothing was checked: every check was skipped (see the reasons above)")
    return 1 if s["failed"] or s["xpassed"] else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="vera-conformance", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    try:
        return main_args(ap.parse_args(argv))
    except VeraError as exc:  # one line, no traceback
        print(f"vera-conformance: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
