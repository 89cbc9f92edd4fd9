"""Time to build the projection pair A, B against NumPy's C Philox, side by side in one run.

    python bench/rng.py [--r 256] [--n-in 4096] [--n-out 4096] [--repeat 15] [--cold 3]

Anchor: numpy.random.Generator(Philox).random(count, dtype=float32) for the same
number of floats (r*n_in + n_out*r); both run on one thread.
Target (issue 13): at most 2.0x the anchor, for a cold first call and for warm repeats.
Row "C port" (issue 27): ports/c built here with the system C compiler (cc -std=c99 -O2, portable
flags, no -march), vera_projection into caller buffers timed in-process with clock_gettime
(``example --bench``), one thread; target at most 1.2x the anchor. Skipped, with the reason, where
no C compiler exists.
Reported: a cold first call of each (a fresh process, so page faults of fresh memory
count; the best of --cold processes) and the best of --repeat warm runs, interleaved, so all
see the same machine.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from vera_ref.projection import projection  # noqa: E402

COLD = """
import sys, time, numpy as np
r, n_in, n_out, which = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
from vera_ref.projection import projection
gen = np.random.Generator(np.random.Philox(0))
t = time.perf_counter()
if which == "numpy":
    gen.random(r * (n_in + n_out), dtype=np.float32)
else:
    projection(1, r, n_in, n_out)
print(time.perf_counter() - t)
"""


def cold(which: str, r: int, n_in: int, n_out: int) -> float:
    """Seconds of the first call in a fresh process."""
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    out = subprocess.run([sys.executable, "-c", COLD, str(r), str(n_in), str(n_out), which], check=True,
                         capture_output=True, text=True, cwd=root).stdout
    return float(out)


C_FLAGS = ["-std=c99", "-O2"]  # portable: no -march, no -ffast-math


def c_port(tmp: str) -> tuple[Path | None, str]:
    """ports/c compiled with C_FLAGS (the example program, whose --bench mode times the build);
    (None, why) where it cannot be built."""
    spec = importlib.util.spec_from_file_location("fuzz_c_port", Path(__file__).resolve().parent.parent / "tools"
                                                  / "fuzz_c_port.py")
    cport = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cport)
    cc = cport.find_cc()
    if cc is None:
        return None, "no C compiler (cc, gcc or clang) on PATH"
    exe = Path(tmp) / "vera-c-bench"
    try:
        subprocess.run([cc, *C_FLAGS, *cport.sources(), "-lm", "-o", str(exe)], check=True, capture_output=True,
                       text=True)
    except subprocess.CalledProcessError as exc:
        return None, f"{cc} failed: {exc.stderr.strip()[-300:]}"
    return exe, f"{os.path.basename(cc)} {' '.join(C_FLAGS)}"


def c_times(exe: Path, r: int, n_in: int, n_out: int, repeat: int) -> tuple[float, float]:
    """(cold, best warm) seconds of vera_projection in a fresh process: the first call writes fresh
    memory (page faults count, as in the cold figures above), then ``repeat`` warm calls."""
    out = subprocess.run([str(exe), "--bench", str(r), str(n_in), str(n_out), str(repeat)], check=True,
                         capture_output=True, text=True).stdout.split()
    return float(out[0]), float(out[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--r", type=int, default=256)
    ap.add_argument("--n-in", type=int, default=4096)
    ap.add_argument("--n-out", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--cold", type=int, default=3, help="fresh processes per cold figure (best is kept)")
    args = ap.parse_args()
    count = args.r * (args.n_in + args.n_out)
    gen = np.random.Generator(np.random.Philox(0))
    shape = (args.r, args.n_in, args.n_out)
    runs = {"vera_ref.projection (Philox4x32-10, spec 1-2)": lambda i: projection(i, *shape),
            "anchor: numpy Generator(Philox).random(float32)": lambda i: gen.random(count, dtype=np.float32)}
    cold_of = dict(zip(runs, ["ours", "numpy"]))
    warm = {k: [] for k in runs}
    tmp = tempfile.TemporaryDirectory(prefix="vera-bench-c-")
    exe, c_how = c_port(tmp.name)
    c_warm: list[float] = []
    for f in runs.values():
        f(0)  # warm-up
    for i in range(args.repeat):
        for k, f in runs.items():
            t = time.perf_counter()
            f(i)
            warm[k].append(time.perf_counter() - t)
        if exe is not None:  # interleaved too: best of 3 warm calls in the C process
            c_warm.append(c_times(exe, *shape, 3)[1])
    colds = {k: min(cold(cold_of[k], *shape) for _ in range(args.cold)) for k in runs}
    c_cold = min(c_times(exe, *shape, 1)[0] for _ in range(args.cold)) if exe is not None else None
    tmp.cleanup()
    anchor = list(runs)[-1]
    print(f"# projection build, r={args.r}, n_in={args.n_in}, n_out={args.n_out}: {count:,} float32 values")
    print(f"# numpy {np.__version__}, python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} cores; "
          f"warm: best of {args.repeat} interleaved (median in brackets); cold: first call in a fresh process, "
          f"best of {args.cold}")
    print(f"{'what':<50} {'warm ms':>8} {'ns/value':>9} {'x anchor':>9} | {'cold ms':>8} {'x anchor':>9}")
    for k in runs:
        w, c = min(warm[k]), colds[k]
        print(f"{k:<50} {w * 1e3:>8.2f} {w / count * 1e9:>9.2f} {w / min(warm[anchor]):>9.2f} | "
              f"{c * 1e3:>8.2f} {c / colds[anchor]:>9.2f}   [warm median {np.median(warm[k]) * 1e3:.2f} ms]")
    if exe is not None:
        w, c = min(c_warm), c_cold
        print(f"{'C port':<50} {w * 1e3:>8.2f} {w / count * 1e9:>9.2f} {w / min(warm[anchor]):>8.2f}x | "
              f"{c * 1e3:>8.2f} {c / colds[anchor]:>8.2f}x   [ports/c, {c_how}, one thread]")
    else:
        print(f"{'C port':<50} skipped: {c_how}")
    for k in list(runs)[:-1]:
        rw, rc = min(warm[k]) / min(warm[anchor]), colds[k] / colds[anchor]
        ok = rw <= 2.0 and rc <= 2.0
        print(f"{k}: warm {rw:.2f}x, cold {rc:.2f}x (target <= 2.0x both): {'met' if ok else 'NOT met'}")
    if exe is not None:
        rw, rc = min(c_warm) / min(warm[anchor]), c_cold / colds[anchor]
        ok = rw <= 1.2 and rc <= 1.2
        print(f"C port: warm {rw:.2f}x, cold {rc:.2f}x (target <= 1.2x both): {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
