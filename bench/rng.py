"""Time to build the projection pair A, B against NumPy's C Philox, side by side in one run.

    python bench/rng.py [--r 256] [--n-in 4096] [--n-out 4096] [--repeat 15]

Anchor: numpy.random.Generator(Philox).random(count, dtype=float32) for the same
number of floats (r*n_in + n_out*r). Target (issue 2): at most 2.0x the anchor.
Reported: the best of --repeat runs of each, interleaved, so both see the same machine.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from vera_ref.projection import projection  # noqa: E402


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
    print(f"ratio {ratio:.2f}x  (target <= 2.0x): {'met' if ratio <= 2.0 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
