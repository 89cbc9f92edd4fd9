"""Progress with an ETA for every long step of the demo, and the clock it is measured with.

On a terminal it is a tqdm bar (carriage returns redraw one line). Anywhere else (``make demo >
log``, CI) it writes plain lines, one per update at most every ``every_s`` seconds plus the last
one, and never a carriage return, so a log reads line by line and no other line lands inside a
bar (issue 21).
"""
from __future__ import annotations

import resource
import sys
import time


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its finished children (getrusage)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class Clock:
    """Wall and CPU seconds of named phases: ``with clock("tuning VeRA"): ...``; ``clock.phases``
    maps each name to {"wall_s", "cpu_s"} (a name used twice adds up)."""

    def __init__(self) -> None:
        self.phases: dict[str, dict[str, float]] = {}
        self.wall0, self.cpu0 = time.perf_counter(), cpu_seconds()

    def __call__(self, name: str) -> "_Phase":
        return _Phase(self, name)

    def add(self, name: str, wall: float, cpu: float) -> None:
        p = self.phases.setdefault(name, {"wall_s": 0.0, "cpu_s": 0.0})
        p["wall_s"] += wall
        p["cpu_s"] += cpu

    def total(self) -> tuple[float, float]:
        """(wall, cpu) seconds since the clock was made."""
        return time.perf_counter() - self.wall0, cpu_seconds() - self.cpu0


class _Phase:
    def __init__(self, clock: Clock, name: str) -> None:
        self.clock, self.name = clock, name

    def __enter__(self) -> "_Phase":
        self.w, self.c = time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *exc) -> None:
        self.clock.add(self.name, time.perf_counter() - self.w, cpu_seconds() - self.c)


def _fmt(seconds: float) -> str:
    s = max(0, int(round(seconds)))
    return f"{s // 60}:{s % 60:02d}"


class Progress:
    """``total`` units of work (steps, texts); ``update(n)`` after each piece, ``close()`` at the end.

    The ETA is the measured rate so far times what is left; the caller may pass ``weight`` so
    that units of unequal cost (a long batch, an evaluation inside a tuning run) count as such."""

    def __init__(self, total: float, desc: str, unit: str = "step", every_s: float = 15.0, stream=None,
                 tty: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.total, self.desc, self.unit, self.every_s = float(max(total, 1e-9)), desc, unit, every_s
        self.done, self.postfix = 0.0, ""
        self.t0 = self.last = time.perf_counter()
        self.bar = None
        if self.tty:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=desc, unit=unit, leave=False, file=self.stream, dynamic_ncols=True)

    def update(self, n: float = 1, postfix: str = "") -> None:
        self.done += n
        self.postfix = postfix
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix_str(postfix, refresh=False)
            return
        now = time.perf_counter()
        if now - self.last >= self.every_s and self.done < self.total:
            self.last = now
            self._line(now)

    def eta(self) -> float:
        elapsed = time.perf_counter() - self.t0
        return elapsed / self.done * (self.total - self.done) if self.done > 0 else float("nan")

    def _line(self, now: float) -> None:
        pct = 100.0 * self.done / self.total
        eta = self.eta()
        tail = f", ETA {_fmt(eta)}" if eta == eta and self.done < self.total else ""
        extra = f", {self.postfix}" if self.postfix else ""
        print(f"      {self.desc}: {self.done:g}/{self.total:g} {self.unit}s ({pct:.0f}%), {_fmt(now - self.t0)} "
              f"elapsed{tail}{extra}", file=self.stream, flush=True)

    def write(self, msg: str) -> None:
        """A line of text while the bar is open (above the bar on a terminal)."""
        if self.bar is not None:
            self.bar.write(msg, file=self.stream)
        else:
            print(msg, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.done > 0 and time.perf_counter() - self.t0 >= self.every_s:  # a long step: its last line
            self._line(time.perf_counter())

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
