"""Learning-rate tuning with one schedule for every method: successive halving (default) or a full grid.

Successive halving (Jamieson & Talwalkar 2016; the inner loop of Hyperband, Li et al. 2018), as
the demo runs it for VeRA and for LoRA alike:

* rung 0: every learning rate of the grid (``--tune`` of them, 3x apart) trains a quarter of the
  step budget; then ONE more rate takes the same short run: one 3x step beyond the grid's edge
  when the best rate sits on that edge (the grid is widened), otherwise the geometric midpoint
  between the best rate and its better neighbour (the grid is refined). Every method therefore
  always spends the same number of steps, widened or not;
* rung 1: the better half (by validation accuracy) continues to half the budget;
* rung 2: the best one continues to the full budget, and is the one that ships (no validation pass
  there: nothing is left to choose; the test set then measures it).

A trial is never restarted: it stops at a rung and continues from there, its cosine schedule
running over the full budget from the start (as in Hyperband's and ASHA's resumed trials), so
the winner is trained exactly as a single run of the full budget would be. With a grid of 3 the
cost is 4 x 1/4 + 2 x 1/4 + 1 x 1/2 = 2 budgets of steps and 6 validation passes per method,
against 3 budgets and 3 passes (plus curve points) for the full grid (``--full``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

LR_STEP = 3.0  # neighbouring learning rates of a grid differ by this factor


def lr_grid(centre: float, n: int) -> list[float]:
    """``n`` learning rates around ``centre`` in steps of 3x (n=3: centre/3, centre, 3*centre)."""
    return [centre * LR_STEP ** (k - (n - 1) / 2) for k in range(n)]


@dataclass
class Schedule:
    """``rungs``: the step counts at which trials are compared (the last is the full budget);
    ``keep``: how many trials train up to each rung; ``extra``: rates added after rung 0's grid
    (0 or 1); ``halving``: False for the full grid (every rate trains the full budget, curve
    points at the rungs before the last)."""
    rungs: list[int]
    keep: list[int]
    extra: int = 0
    halving: bool = True
    name: str = "successive halving"

    def total_steps(self) -> int:
        """Training steps of one method's whole tuning (the progress bar's total)."""
        return sum(k * (r - r0) for k, r, r0 in zip(self.keep, self.rungs, [0] + self.rungs[:-1]))

    def runs(self) -> list[tuple[int, int, int]]:
        """(trials, from step, to step) of each rung: the work the up-front estimate adds up."""
        return [(k, r0, r) for k, r, r0 in zip(self.keep, self.rungs, [0] + self.rungs[:-1])]

    def evaluated(self, i: int) -> bool:
        """Whether rung ``i``'s trials get a validation pass: every rung of the full grid (curve
        points, the choice at the last); under halving, every rung where something is chosen."""
        return not self.halving or i < len(self.rungs) - 1 or self.keep[i] > 1


def halving_schedule(steps: int, n: int) -> Schedule:
    """Successive halving over ``n`` grid rates (n >= 2) plus one widening or refining rate."""
    if n < 2:
        return Schedule([steps], [1], 0, True, "one learning rate (no tuning)")
    rungs = sorted({max(1, steps // 4), max(1, steps // 2), steps})
    first = n + 1
    keep = {1: [first], 2: [first, 1], 3: [first, math.ceil(first / 2), 1]}[len(rungs)]
    return Schedule(rungs, keep, 1, True)


def full_schedule(steps: int, n: int, points: int = 5) -> Schedule:
    """``--full``: every rate of the grid trains the full budget; curve points every ``steps/points``."""
    every = max(1, steps // points)
    rungs = sorted(set(range(every, steps + 1, every)) | {steps})
    return Schedule(rungs, [n] * len(rungs), 0, False, "full grid")


def extra_rate(grid: list[float], scores: list[float]) -> tuple[float, str]:
    """The rate rung 0 adds after the grid: (rate, why). Ties go to the first (lowest) best rate."""
    best = max(range(len(grid)), key=lambda i: scores[i])
    if best == len(grid) - 1:
        return grid[-1] * LR_STEP, "best on the top edge of the grid: widened upwards"
    if best == 0:
        return grid[0] / LR_STEP, "best on the bottom edge of the grid: widened downwards"
    nb = best + 1 if scores[best + 1] > scores[best - 1] else best - 1
    return math.sqrt(grid[best] * grid[nb]), "best inside the grid: refined towards its better neighbour"


@dataclass
class Trial:
    lr: float
    run: object  # train.Trial
    curve: list[tuple[int, float]] = field(default_factory=list)

    @property
    def score(self) -> float | None:
        """Validation accuracy at the last evaluated rung (None: never evaluated, nothing was chosen)."""
        return self.curve[-1][1] if self.curve else None


def tune(grid: list[float], schedule: Schedule, start, evaluate, bar=None, log=print) -> tuple[Trial, list[Trial], dict]:
    """Run ``schedule`` over ``grid``: ``start(lr)`` makes a train.Trial, ``evaluate(trial, last)``
    gives its validation accuracy (``last``: at the final rung, else at an earlier one).

    Returns (winner, every trial in the order started, a JSON record of every choice)."""
    say = bar.write if bar is not None else log
    trials = [Trial(lr, start(lr)) for lr in grid]
    record: dict = {"schedule": schedule.name, "grid": list(grid), "rungs": []}
    live = list(trials)
    for i, (steps, keep) in enumerate(zip(schedule.rungs, schedule.keep)):
        last, scored = i == len(schedule.rungs) - 1, schedule.evaluated(i)
        if schedule.halving and i > 0:  # the better ones continue (ties: the earlier started)
            live = sorted(live, key=lambda t: -t.score)[:keep]
            live.sort(key=trials.index)
        for t in live:
            _advance(t, steps, evaluate if scored else None, last, bar)
        if i == 0 and schedule.extra:
            lr, why = extra_rate([t.lr for t in trials], [t.score for t in trials])
            t = Trial(lr, start(lr))
            trials.append(t)
            live.append(t)
            _advance(t, steps, evaluate if scored else None, last, bar)
            record["extra"] = {"lr": lr, "why": why}
            say(f"      {why}: {lr:.3g}")
        entry = {"steps": steps, "trained": [t.lr for t in live]}
        if scored:
            entry["validation_accuracy"] = {f"{t.lr:.6g}": t.score for t in live}
            msg = ", ".join(f"lr {t.lr:.3g}: {t.score:.4f}" for t in live)
            say(f"      rung {i + 1}/{len(schedule.rungs)} at {steps} steps, validation accuracy {msg}")
        else:
            say(f"      rung {i + 1}/{len(schedule.rungs)}: lr {live[0].lr:.3g} trained to the full {steps} steps")
        record["rungs"].append(entry)
    winner = max(live, key=lambda t: t.score if t.score is not None else 0.0)  # ties: the earlier started
    record["chosen_lr"] = winner.lr
    record["chosen_on_edge"] = len(trials) > 1 and winner.lr in (min(t.lr for t in trials), max(t.lr for t in trials))
    record["trials"] = [{"lr": t.lr, "validation_accuracy": t.score, "steps": t.run.step,
                         "curve": t.curve, "train_seconds": round(t.run.seconds, 1)} for t in trials]
    return winner, trials, record


def _advance(t: Trial, steps: int, evaluate, last: bool, bar) -> None:
    t.run.advance(steps, bar)
    if evaluate is not None:
        t.curve.append((steps, float(evaluate(t.run, last))))
