"""Time to build the projection pair A, B against NumPy's C Philox, side by side in one run.

    python bench/rng.py [--r 256] [--n-in 4096] [--n-out 4096] [--repeat 15]

Anchor: numpy.random.Generator(Philox).random(count, dtype=float32) for the same
number of floats (r*n_in + n_out*r). Target (issue 2): at most 2.0x the anchor.
Reported: a cold first call of each (a fresh process, so page faults of fresh memory count)
and the best of --repeat warm runs, interleaved, so both see the same machine.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from vera_ref.projection import projection  # noqa: E402


COLD = """
import sys, time, numpy as np
r, n_in, n_out, which = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
from vera_ref.projection import projection
gen = np.random.Generator(np.random.Philox(0))
t = time.perf_counter()
if which == "ours":
    projection(1, r, n_in, n_out)
else:
    gen.random(r * (n_in + n_out), dtype=np.float32)
print(time.perf_counter() - t)
"""


def cold(which: str, r: int, n_in: int, n_out: int) -> float:
    """Seconds of the first call in a fresh process."""
    out = subprocess.run([sys.executable, "-c", COLD, str(r), str(n_in), str(n_out), which], check=True,
                         capture_output=True, text=True).stdout
    return float(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--r", type=int, default=256)
    ap.add_argument("--n-in", type=int, default=4096)
    ap.add_argument("--n-out", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    count = args.r * (args.n_in + args.n_out)
    gen = np.random.Generator(np.random.Philox(0))
    ours, anchor = [], []
    projection(1, args.r, args.n_in, args.n_out)  # warm-up
    gen.random(count, dtype=np.float32)
    for i in range(args.repeat):
        t = time.perf_counter()
        projection(i, args.r, args.n_in, args.n_out)
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        gen.random(count, dtype=np.float32)
        anchor.append(time.perf_counter() - t)
    best_ours, best_anchor = min(ours), min(anchor)
    print(f"# projection build, r={args.r}, n_in={args.n_in}, n_out={args.n_out}: {count:,} float32 values")
    print(f"# numpy {np.__version__}, python {platform.python_version()}, {platform.machine()}, "
          f"best of {args.repeat} (median in brackets)")
    print(f"{'what':<52} {'ms':>8} {'ns/value':>9} {'x anchor':>9}")
    for name, ts in (("vera_ref.projection (Philox4x32-10, spec 1-2)", ours),
                     ("anchor: numpy Generator(Philox).random(float32)", anchor)):
        best = min(ts)
        print(f"{name:<52} {best * 1e3:>8.2f} {best / count * 1e9:>9.2f} {best / best_anchor:>9.2f}"
              f"   [{np.median(ts) * 1e3:.2f} ms]")
    ratio = best_ours / best_anchor
    print(f"warm ratio {ratio:.2f}x  (target <= 2.0x): {'met' if ratio <= 2.0 else 'NOT met'}")
    c_ours = min(cold("ours", args.r, args.n_in, args.n_out) for _ in range(3))
    c_anchor = min(cold("numpy", args.r, args.n_in, args.n_out) for _ in range(3))
    print(f"{'cold first call, vera_ref.projection':<52} {c_ours * 1e3:>8.2f} {c_ours / count * 1e9:>9.2f} "
          f"{c_ours / c_anchor:>9.2f}")
    print(f"{'cold first call, anchor':<52} {c_anchor * 1e3:>8.2f} {c_anchor / count * 1e9:>9.2f} {1.0:>9.2f}")
    print(f"cold ratio {c_ours / c_anchor:.2f}x  (target <= 2.0x): {'met' if c_ours / c_anchor <= 2.0 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
