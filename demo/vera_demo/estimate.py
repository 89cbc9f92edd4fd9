"""The demo's up-front time estimate: costs measured at the start of the run times the planned work.

Nothing here is a machine constant: each cost is timed on this machine, under its present load,
with the run's own models and batches, before any training (``run.calibrate``). The work is known
exactly in advance: the batches of every training step (so their padded token counts), the texts
of every evaluation, the tuning schedule.
"""
from __future__ import annotations

from dataclasses import dataclass

from .train import eval_tokens, padded_tokens

# torch.onnx.export traces the model and writes ~90 MB; ONNX Runtime then builds a session from it.
# Both scale with the model's size, not with the data, so they are counted in forward passes over
# UNIT_TOKENS tokens, a cost the start of the run measures: the one figure here that is not timed
# in the run itself. It is the ratio seen in this project's runs: the two exports and their sessions
# took about 11 CPU seconds in a --limit 48 run and in a full one alike, next to 0.86 CPU seconds per
# such pass; a small part of the total (README, "where the time goes").
UNIT_TOKENS = 2048
EXPORT_PASSES = 6


@dataclass
class Costs:
    """What the start of the run measured (seconds)."""
    imports_s: float  # importing torch, PEFT and vera_torch in this process (the reload pays it again)
    load_s: float  # reading the model and data (the reload pays the model part again)
    step: dict  # method label -> (seconds per step, seconds per padded token) of a training step
    eval_tok: dict  # "base" or a method label -> seconds per padded token evaluated (no grad)


def tuning_seconds(costs: Costs, label: str, schedule, step_tokens: list[int], val_tokens: int,
                   curve_tokens: int) -> float:
    """One method's tuning: its training steps (each at its own padded size) and validation passes."""
    a, b = costs.step[label]
    train = sum(k * sum(a + b * t for t in step_tokens[r0:r]) for k, r0, r in schedule.runs())
    if schedule.halving:
        evals = sum(k for i, k in enumerate(schedule.keep) if schedule.evaluated(i)) * val_tokens
    else:  # the full grid: curve points on a few snippets, the choice on the whole validation split
        evals = schedule.keep[0] * ((len(schedule.rungs) - 1) * curve_tokens + val_tokens)
    return train + evals * costs.eval_tok[label]


def plan(costs: Costs, *, labels: tuple[str, str], schedule, steps_plan: list, fit_lengths, val_lengths,
         curve_lengths, test_lengths, n_vera_adapters: int) -> dict[str, float]:
    """Seconds of each remaining part of the run, in the order they run."""
    vera, lora = labels
    step_tokens = [padded_tokens(fit_lengths, idx) for idx in steps_plan]
    test_t = eval_tokens(test_lengths)
    batch64 = len(test_lengths[:64]) * max(test_lengths[:64])  # the mixed batch: the first 64 test texts
    val_t, curve_t = eval_tokens(val_lengths), eval_tokens(curve_lengths)
    return {
        "baselines": (eval_tokens(fit_lengths) + test_t) * costs.eval_tok["base"],
        f"tuning {vera}": tuning_seconds(costs, vera, schedule, step_tokens, val_t, curve_t),
        f"tuning {lora}": tuning_seconds(costs, lora, schedule, step_tokens, val_t, curve_t),
        "test accuracies": test_t * (costs.eval_tok[vera] + costs.eval_tok[lora]),
        "reload in a fresh process": costs.imports_s + costs.load_s + test_t * costs.eval_tok[vera],
        "ONNX export and checks": (2 * EXPORT_PASSES * UNIT_TOKENS + test_t) * costs.eval_tok["base"]
                                  + (n_vera_adapters + 2) * batch64 * costs.eval_tok[vera],
    }
