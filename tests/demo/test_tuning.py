"""The demo's tuning schedule, batching, time estimate and progress output (issue 22; issue 21's logs):
fast unit tests, no model or data needed."""
import io
import math
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from vera_demo import tuning as T  # noqa: E402
from vera_demo.estimate import Costs, tuning_seconds  # noqa: E402
from vera_demo.progress import Clock, Progress  # noqa: E402
from vera_demo.train import eval_tokens, grouped_batches, padded_tokens  # noqa: E402


class FakeRun:
    """A train.Trial stand-in: validation accuracy is a known function of (lr, steps trained)."""
    def __init__(self, lr, log):
        self.lr, self.step, self.seconds, self.log = lr, 0, 0.0, log

    def advance(self, to_step, bar=None):
        self.log.append((self.lr, self.step, to_step))
        if bar is not None:
            bar.update(to_step - self.step)
        self.step = to_step


def _tune(grid, schedule, score):
    log = []
    best, trials, record = T.tune(grid, schedule, lambda lr: FakeRun(lr, log),
                                  lambda run, last: score(run.lr, run.step), log=lambda m: None)
    return best, trials, record, log


def test_halving_schedule_budget_is_two_full_runs_and_the_same_widened_or_not():
    s = T.halving_schedule(250, 3)
    assert s.rungs == [62, 125, 250] and s.keep == [4, 2, 1] and s.extra == 1
    assert s.total_steps() == 4 * 62 + 2 * 63 + 125 == 499
    assert T.full_schedule(250, 3).total_steps() == 750
    assert T.full_schedule(250, 3).rungs == [50, 100, 150, 200, 250]
    # for any budget: the steps actually trained are total_steps(), wherever the best rate lies
    for steps in (1, 2, 5, 8, 250, 1000):
        for n in (2, 3, 5):
            s = T.halving_schedule(steps, n)
            assert s.rungs[-1] == steps and s.keep[-1] == (1 if steps > 1 else n + 1)
            assert steps < 8 or s.total_steps() < T.full_schedule(steps, n).total_steps()
            for top in ("low", "high", "middle"):  # the best rate anywhere: the budget does not change
                centre = {"low": 1e-3, "high": 1e-1, "middle": 1e-2}[top]
                best, trials, _, log = _tune(T.lr_grid(1e-2, n), s, lambda lr, st: -abs(math.log(lr / centre)) + st)
                assert sum(b - a for _, a, b in log) == s.total_steps(), (steps, n, top)
                assert best.run.step == steps and len(trials) == n + 1


def test_no_tuning_is_one_run_of_the_full_budget_and_no_validation_pass():
    best, trials, record, log = _tune([0.03], T.halving_schedule(100, 1), lambda lr, st: 1 / 0)
    assert log == [(0.03, 0, 100)] and record["chosen_lr"] == 0.03 and "extra" not in record
    assert best.curve == [] and record["trials"][0]["validation_accuracy"] is None


def test_the_better_half_continues_and_the_best_gets_the_full_budget():
    # accuracy peaks at lr 0.03 (the grid's centre): the extra rate refines towards the better neighbour
    score = lambda lr, st: 0.9 - 0.05 * abs(math.log(lr / 0.03)) - (0.01 if lr > 0.03 else 0)  # noqa: E731
    best, trials, record, log = _tune(T.lr_grid(0.03, 3), T.halving_schedule(200, 3), score)
    assert [round(t.lr, 6) for t in trials] == [0.01, 0.03, 0.09, round(math.sqrt(0.03 * 0.01), 6)]
    assert record["extra"]["why"].startswith("best inside the grid: refined")
    assert [len(r["trained"]) for r in record["rungs"]] == [4, 2, 1]
    # validation passes where something is chosen: not at the last rung, where one trial is left
    assert [len(r.get("validation_accuracy", ())) for r in record["rungs"]] == [4, 2, 0]
    kept = [float(k) for k in record["rungs"][1]["validation_accuracy"]]
    assert sorted(kept) == pytest.approx(sorted([0.03, math.sqrt(0.03 * 0.01)]))  # the two best of rung 0
    assert best.lr == pytest.approx(0.03) and record["chosen_lr"] == best.lr and best.run.step == 200
    assert not record["chosen_on_edge"]
    steps = {round(t.lr, 6): t.run.step for t in trials}
    assert sorted(steps.values()) == [50, 50, 100, 200]
    # the record holds the validation number behind every choice
    for t, r in zip(trials, record["trials"]):
        assert r["curve"] == t.curve and r["validation_accuracy"] == t.score and r["lr"] == t.lr


@pytest.mark.parametrize("peak,extra,why", [(1.0, 0.27, "top edge"), (1e-4, 0.01 / 3, "bottom edge")])
def test_a_grid_whose_best_rate_is_on_its_edge_is_widened(peak, extra, why):
    score = lambda lr, st: -abs(math.log(lr / peak))  # noqa: E731
    best, trials, record, _ = _tune(T.lr_grid(0.03, 3), T.halving_schedule(100, 3), score)
    assert record["extra"]["lr"] == pytest.approx(extra) and why in record["extra"]["why"]
    assert best.lr == pytest.approx(extra) and record["chosen_on_edge"]  # said so in results.json


def test_full_grid_trains_every_rate_the_full_budget_with_curve_points():
    calls = []
    log = []
    best, trials, record = T.tune([0.1, 0.2], T.full_schedule(10, 2), lambda lr: FakeRun(lr, log),
                                  lambda run, last: calls.append(last) or run.lr, log=lambda m: None)
    assert [t.run.step for t in trials] == [10, 10] and best.lr == 0.2 and "extra" not in record
    assert calls == [False] * 8 + [True] * 2  # curve points on the few snippets, the choice on all of them
    assert [s for s, _ in best.curve] == [2, 4, 6, 8, 10]


def test_grouped_batches_see_every_text_once_per_epoch_and_pad_less():
    rng = np.random.default_rng(1)
    lengths = rng.integers(5, 64, size=1000)
    plan = grouped_batches(lengths, 16, 62 * 3, seed=0)
    assert len(plan) == 186 and all(len(b) == 16 for b in plan)
    for e in range(3):  # 62 whole batches per epoch, each text at most once, 992 of 1000 texts
        seen = np.concatenate(plan[62 * e: 62 * (e + 1)])
        assert len(set(seen.tolist())) == 992
    assert [b.tolist() for b in grouped_batches(lengths, 16, 186, seed=0)] == [b.tolist() for b in plan]
    assert [b.tolist() for b in grouped_batches(lengths, 16, 186, seed=1)] != [b.tolist() for b in plan]
    random_pad = np.mean([padded_tokens(lengths, rng.permutation(1000)[:16]) for _ in range(500)])
    grouped_pad = np.mean([padded_tokens(lengths, b) for b in plan])
    assert grouped_pad < 0.8 * random_pad
    assert padded_tokens(lengths, [0, 1]) == 2 * max(lengths[0], lengths[1])
    assert eval_tokens([3, 1, 2], batch=2) == 2 * 2 + 1 * 3


def test_tuning_estimate_adds_every_planned_step_and_evaluation():
    s = T.halving_schedule(8, 2)  # rungs 2, 4, 8; trials 3, 2, 1
    costs = Costs(0.0, 0.0, {"m": (0.5, 0.01)}, {"m": 0.001})
    step_tokens = list(range(100, 108))
    want_train = 3 * sum(0.5 + 0.01 * t for t in step_tokens[0:2]) + 2 * sum(0.5 + 0.01 * t for t in step_tokens[2:4]) \
        + sum(0.5 + 0.01 * t for t in step_tokens[4:8])
    assert tuning_seconds(costs, "m", s, step_tokens, 1000, 10) == pytest.approx(want_train + 5 * 1000 * 0.001)
    f = T.full_schedule(8, 2, points=4)  # every 2 steps, curve points on 10 tokens, the last on 1000
    assert tuning_seconds(costs, "m", f, step_tokens, 1000, 10) == pytest.approx(
        2 * sum(0.5 + 0.01 * t for t in step_tokens) + 2 * (3 * 10 + 1000) * 0.001)


class _Stream(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self._tty = tty

    def isatty(self):
        return self._tty


def test_progress_off_a_terminal_writes_plain_lines_at_a_sane_rate(monkeypatch):
    import vera_demo.progress as P
    now = [100.0]
    monkeypatch.setattr(P.time, "perf_counter", lambda: now[0])
    out = _Stream(tty=False)
    with Progress(100, "VeRA tuning", every_s=10.0, stream=out) as bar:
        for _ in range(100):
            now[0] += 1.0  # one step a second: a line every 10 s, not one per step
            bar.update(1, "loss 0.5")
        bar.write("      rung 1/3")
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert len(lines) == 11  # 9 updates (10 s apart, not at 100%), the written line, the last one
    assert lines[0] == "      VeRA tuning: 10/100 steps (10%), 0:10 elapsed, ETA 1:30, loss 0.5"
    assert lines[-2] == "      rung 1/3" and lines[-1].startswith("      VeRA tuning: 100/100 steps (100%), 1:40")


def test_progress_on_a_terminal_is_a_tqdm_bar():
    out = _Stream(tty=True)
    with Progress(5, "evaluating", unit="text", stream=out) as bar:
        bar.update(5)
    assert "\r" in out.getvalue() and "evaluating" in out.getvalue()


def test_a_short_step_off_a_terminal_writes_nothing():
    out = _Stream(tty=False)
    with Progress(3, "evaluating", stream=out) as bar:
        bar.update(3)
    assert out.getvalue() == ""


def test_clock_adds_phases_of_one_name():
    c = Clock()
    with c("a"):
        sum(range(10000))
    with c("a"):
        pass
    assert set(c.phases) == {"a"} and c.phases["a"]["wall_s"] >= 0 and c.phases["a"]["cpu_s"] >= 0
    wall, cpu = c.total()
    assert wall >= c.phases["a"]["wall_s"] and re.match(r"\d", f"{cpu}")
