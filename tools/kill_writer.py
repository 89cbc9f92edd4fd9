"""spec 4.7 under fire: SIGKILL save_adapter at random moments, and race many writers.

    python tools/kill_writer.py --kills 100 --writers 100

Kills: a child process saves a 8 MB adapter over ``a.safetensors`` again and again; it is
killed after a random delay. After each kill the target must load (the old file or a whole
new one) and the folder must hold no temporary (``vera_ref.atomic`` writes into an anonymous
O_TMPFILE inode on Linux; with ``--named`` it uses named temporaries, swept by the next write).
Writers: N processes save different adapters to one path at once: no crash, one whole file.
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

from vera_ref import atomic
from vera_ref.adapter import load_adapter, new_adapter, save_adapter

CHILD = """
import sys, numpy as np
from vera_ref import atomic
from vera_ref.adapter import new_adapter, save_adapter
atomic.USE_O_TMPFILE = sys.argv[2] == "1"
ad = new_adapter([("q", 8, 8)], r=2, seed=6)
ad.extra["big"] = (np.ones(2_000_000, np.float32), "float32")
print("go", flush=True)
while True:
    save_adapter(ad, sys.argv[1])
"""


def temps(folder: str) -> list[str]:
    return [n for n in os.listdir(folder) if atomic.is_temporary(n)]


def kills(n: int, anonymous: bool, seed: int) -> None:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "a.safetensors")
        save_adapter(new_adapter([("q", 8, 8)], r=2, seed=5), path)
        broken = left = 0
        for _ in range(n):
            p = subprocess.Popen([sys.executable, "-c", CHILD, path, "1" if anonymous else "0"],
                                 stdout=subprocess.PIPE, text=True)
            p.stdout.readline()
            time.sleep(rng.uniform(0.0, 0.5))
            p.send_signal(signal.SIGKILL)
            p.wait()
            try:
                load_adapter(path)
            except Exception:  # noqa: BLE001
                broken += 1
            left += len(temps(d))
        save_adapter(new_adapter([("q", 8, 8)], r=2, seed=5), path)
        print(f"{n} kills ({'O_TMPFILE' if anonymous else 'named temporaries'}): target unreadable {broken} "
              f"times; temporaries seen right after a kill: {left}; after the next write: {len(temps(d))}")


def writers(n: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "a.safetensors")
        script = ("import sys\nfrom vera_ref.adapter import new_adapter, save_adapter\n"
                  "save_adapter(new_adapter([('q', 256, 256)], r=16, seed=int(sys.argv[2])), sys.argv[1])\n")
        procs = [subprocess.Popen([sys.executable, "-c", script, path, str(i)], stderr=subprocess.PIPE)
                 for i in range(n)]
        codes = [p.wait() for p in procs]
        crashed = sum(c != 0 for c in codes)
        seed = load_adapter(path).config.seed
        print(f"{n} concurrent writers: crashed {crashed}; final file loads (seed {seed}); "
              f"temporaries left {len(temps(d))}; files in folder {sorted(os.listdir(d))}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=100)
    ap.add_argument("--writers", type=int, default=100)
    ap.add_argument("--named", action="store_true", help="also run the kills with named temporaries")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    kills(args.kills, True, args.seed)
    if args.named:
        kills(args.kills, False, args.seed)
    writers(args.writers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
