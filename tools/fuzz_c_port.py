"""Differential fuzzing of the C port's reader (ports/c) against the Python reference (spec 4.6).

    python tools/fuzz_c_port.py --minutes 5           # run for 5 minutes
    python tools/fuzz_c_port.py --cases 2000 --seed 1

Mutants are the ones ``tools/fuzz_reader.py`` makes for the Python reader (its ``seeds`` and
``mutate``, imported, same random stream for a given seed). Each is judged by the reference
(``read_adapter`` on the bytes, as ``fuzz_reader.outcome``) and by the C port built
with ``-fsanitize=address,undefined -fno-sanitize-recover=all`` (``example --batch``, one process
per batch of files). Printed: cases, agreements, disagreements (verdict or rule code/field, or the
checksums of an accepted file), C crashes and sanitizer reports (any stderr output), time.
Exit status 1 on any disagreement, crash or sanitizer report.

The module also holds the one recipe for compiling the port (``find_cc``, ``compile_port``), used
by tests/ports/test_c_port.py and bench/rng.py.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
PORT = ROOT / "ports" / "c"
WARN = ["-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror"]
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g", "-O1"]
# sanitizer reports go to stderr and end the process with a non-zero status; leaks are reported too
SAN_ENV = {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:exitcode=86",
           "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1:exitcode=87"}
BATCH = 400  # files per C process


def _load_fuzz_reader():
    spec = importlib.util.spec_from_file_location("fuzz_reader", ROOT / "tools" / "fuzz_reader.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def find_cc() -> str | None:
    """The system C compiler: $CC, else cc, gcc or clang on PATH."""
    for name in filter(None, [os.environ.get("CC"), "cc", "gcc", "clang"]):
        path = shutil.which(name)
        if path:
            return path
    return None


def sources() -> list[str]:
    """ports/c/*.c: together, the example program."""
    return sorted(str(p) for p in PORT.glob("*.c"))


def compile_port(out: Path, *, sanitize: bool = False, opt: str = "-O2", cc: str | None = None) -> Path:
    """Compile ports/c/*.c into ``out`` (a file path); raises CalledProcessError with the
    compiler's output on failure."""
    cc = cc or find_cc()
    if cc is None:
        raise FileNotFoundError("no C compiler (cc, gcc or clang) on PATH")
    flags = WARN + (SANITIZE if sanitize else [opt])
    cmd = [cc, *flags, *sources(), "-lm", "-o", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return out


def sanitizer_works(cc: str, tmp: Path) -> str | None:
    """None when a sanitized program links and runs here, else why not (runtime missing)."""
    src = tmp / "probe.c"
    src.write_text("int main(void) { return 0; }\n")
    try:
        subprocess.run([cc, *SANITIZE, str(src), "-o", str(tmp / "probe")], check=True, capture_output=True,
                       text=True)
        subprocess.run([str(tmp / "probe")], check=True, capture_output=True, text=True,
                       env={**os.environ, **SAN_ENV})
    except subprocess.CalledProcessError as exc:
        return (exc.stderr or exc.stdout or str(exc)).strip().splitlines()[-1] if (exc.stderr or exc.stdout) else str(exc)
    return None


def escape_field(field: str) -> str:
    """The field as the C example prints it: printable ASCII but '\\' as is, other bytes \\xNN
    (UTF-8; a lone surrogate in its 3-byte form, as the port keeps it)."""
    out = []
    for b in field.encode("utf-8", "surrogatepass"):
        out.append(chr(b) if 0x20 < b < 0x7F and b != 0x5C else f"\\x{b:02x}")
    return "".join(out)


def python_verdict(fuzz, blob: bytes) -> str:
    """The reference's verdict in the C example's batch format (``accepted g A B ...`` or
    ``rejected CODE FIELD``); ``other ...`` for any exception that is not AdapterFileError."""
    kind, value = fuzz.outcome(blob)
    if kind == "accepted":
        parts = ["accepted"]  # per group (spec 2.4): its number, and A's and B's checksums (verified)
        for (g, _, _), e in zip(value.config.groups(), value.config.projection_sha256):
            parts += [str(g), e["A"], e["B"]]
        return " ".join(parts)
    if kind == "rejected":
        return f"rejected {value.code} {escape_field(value.field)}"
    return f"other {type(value).__name__}"


def run_c(exe: Path, paths: list[Path]) -> tuple[list[str], int, str]:
    """The C verdicts of ``paths`` (one line each), the exit status and stderr of the process."""
    proc = subprocess.run([str(exe), "--batch"], input="".join(f"file {p}\n" for p in paths), capture_output=True,
                          text=True, errors="replace", env={**os.environ, **SAN_ENV})
    return proc.stdout.splitlines(), proc.returncode, proc.stderr


def differential(exe: Path, cases: int | None, seconds: float | None, seed: int, workdir: Path,
                 log: Callable[[str], None] = print) -> dict:
    """Mutants of tools/fuzz_reader.py judged by both readers; the figures of the run."""
    fuzz = _load_fuzz_reader()
    rng = random.Random(seed)
    pool = fuzz.seeds()
    stats = {"cases": 0, "agree": 0, "disagree": [], "crashes": [], "sanitizer": [], "accepted": 0,
             "python_other": 0, "codes": {}}
    start = time.perf_counter()
    while True:
        left = None if cases is None else cases - stats["cases"]
        if left is not None and left <= 0:
            break
        if seconds is not None and time.perf_counter() - start >= seconds:
            break
        n = BATCH if left is None else min(BATCH, left)
        blobs = [fuzz.mutate(rng, rng.choice(pool)) for _ in range(n)]
        want = [python_verdict(fuzz, b) for b in blobs]
        paths = []
        for i, b in enumerate(blobs):
            p = workdir / f"case-{i:04d}.safetensors"
            p.write_bytes(b)
            paths.append(p)
        got, rc, err = run_c(exe, paths)
        if rc != 0 or err.strip():
            # a crash or a sanitizer report: the case is the first without an answer
            bad = len(got)
            kind = "sanitizer" if ("Sanitizer" in err or "runtime error" in err) else "crashes"
            stats[kind].append((blobs[bad] if bad < n else b"", err[-3000:], rc))
            log(f"C process ended with status {rc} at case {stats['cases'] + bad}: {err[-500:]}")
            got = got + ["<no answer>"] * (n - len(got))
        for blob, w, g in zip(blobs, want, got):
            stats["cases"] += 1
            stats["python_other"] += w.startswith("other")
            if w == g:
                stats["agree"] += 1
                stats["accepted"] += w.startswith("accepted")
                code = w.split()[1] if w.startswith("rejected") else "accepted"
                stats["codes"][code] = stats["codes"].get(code, 0) + 1
            else:
                stats["disagree"].append((blob, w, g))
        for p in paths:
            p.unlink()
    stats["seconds"] = time.perf_counter() - start
    return stats


def save_cases(stats: dict, folder: Path) -> list[Path]:
    """Write the disagreeing and crashing mutants to ``folder`` for replay."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, (blob, *_rest) in enumerate(stats["disagree"] + stats["crashes"] + stats["sanitizer"]):
        p = folder / f"c-port-case-{i:03d}.safetensors"
        p.write_bytes(blob)
        out.append(p)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, help="run this long")
    ap.add_argument("--cases", type=int, help="run this many cases")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save", type=Path, help="write disagreeing or crashing mutants into this folder")
    args = ap.parse_args(argv)
    if args.minutes is None and args.cases is None:
        args.minutes = 1.0
    cc = find_cc()
    if cc is None:
        print("no C compiler (cc, gcc or clang) on PATH: nothing to fuzz")
        return 2
    with tempfile.TemporaryDirectory(prefix="vera-c-fuzz-") as tmp:
        tmp = Path(tmp)
        why = sanitizer_works(cc, tmp)
        if why:
            print(f"the sanitizer runtime does not work here ({why}): the fuzz run needs it")
            return 2
        exe = compile_port(tmp / "vera-c-san", sanitize=True, cc=cc)
        work = tmp / "cases"
        work.mkdir()
        s = differential(exe, args.cases, None if args.minutes is None else args.minutes * 60, args.seed, work)
    print(f"cases                  {s['cases']} in {s['seconds']:.1f} s (seed {args.seed}), C build: "
          f"{os.path.basename(cc)} {' '.join(WARN + SANITIZE)}")
    print(f"agreements             {s['agree']} (accepted {s['accepted']}, rejected with the same code and field "
          f"{s['agree'] - s['accepted']})")
    print(f"disagreements          {len(s['disagree'])}")
    print(f"C crashes              {len(s['crashes'])}")
    print(f"sanitizer reports      {len(s['sanitizer'])}")
    print(f"reference escapes      {s['python_other']} (exceptions other than AdapterFileError)")
    print(f"distinct verdicts      {len(s['codes'])} (accepted and {len(s['codes']) - ('accepted' in s['codes'])} rule codes)")
    print("verdicts               " + ", ".join(f"{c} {n}" for c, n in sorted(s["codes"].items(), key=lambda x: -x[1])[:14]))
    for blob, w, g in s["disagree"][:10]:
        print(f"  python: {w[:160]}\n  c:      {g[:160]}\n  bytes:  {blob[:160]!r}")
    if args.save and (s["disagree"] or s["crashes"] or s["sanitizer"]):
        print("saved: " + " ".join(str(p) for p in save_cases(s, args.save)))
    return 1 if s["disagree"] or s["crashes"] or s["sanitizer"] or s["python_other"] else 0


if __name__ == "__main__":
    sys.exit(main())
