"""Training loops and baselines of the demo (all on the same split and step budget)."""
from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from .progress import Progress


def batches(n: int, size: int, steps: int, seed: int):
    """``steps`` index batches, reshuffling each epoch (``--full``: release 1.2.0's protocol)."""
    rng = np.random.default_rng(seed)
    order, pos = rng.permutation(n), 0
    for _ in range(steps):
        if pos + size > n:
            order, pos = rng.permutation(n), 0
        yield order[pos: pos + size]
        pos += size


def grouped_batches(lengths, size: int, steps: int, seed: int, group: int = 8) -> list[np.ndarray]:
    """``steps`` index batches of texts of similar length (the default protocol).

    Each epoch is a fresh permutation cut into groups of ``group`` batches; each group is sorted by
    length and cut into batches, and the epoch's batches are shuffled (the "sortish" sampler of
    fastai, Hugging Face Trainer's ``group_by_length``). Every text is seen once per epoch as with
    ``batches``, but a batch pads to a length close to its texts' own: on these snippets the mean
    padded length falls from about 49 tokens to about 31 (mean text 27.5), so a step costs about
    0.64 of a random batch's."""
    lengths = np.asarray(lengths)
    n = len(lengths)
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    while len(out) < steps:
        order = rng.permutation(n)[: n - n % size]  # whole batches only (the rest waits for the next epoch)
        epoch = []
        for g in range(0, len(order), size * group):
            chunk = order[g: g + size * group]
            chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
            epoch += [chunk[i: i + size] for i in range(0, len(chunk), size)]
        out += [epoch[i] for i in rng.permutation(len(epoch))]
    return out[:steps]


def padded_tokens(lengths, idx) -> int:
    """Tokens a batch computes on: its size times its longest text (dynamic padding)."""
    return len(idx) * int(max(lengths[i] for i in idx))


@torch.no_grad()
def _by_length(fn, tok, texts: list[str], batch: int, desc: str) -> torch.Tensor:
    """fn(ids, mask) over batches of texts of similar token length (little padding), in the input order.

    Sorted by tokens, not characters: on the demo's splits that is 20-27% fewer padded tokens."""
    lengths = tok.lengths(texts)
    order = sorted(range(len(texts)), key=lambda i: lengths[i])  # stable: ties keep the input order
    out = []
    with Progress(len(texts), desc, unit="text") as bar:
        for i in range(0, len(texts), batch):
            chunk = order[i: i + batch]
            out.append(fn(*tok([texts[j] for j in chunk])))
            bar.update(len(chunk))
    res = torch.cat(out)
    return res[torch.argsort(torch.tensor(order))]


def eval_tokens(lengths, batch: int = 64) -> int:
    """Padded tokens of ``_by_length``'s batches, from the texts' token lengths."""
    ls = np.sort(np.asarray(lengths))
    return int(sum(len(ls[i: i + batch]) * ls[i: i + batch].max() for i in range(0, len(ls), batch)))


def embed(bert, tok, texts: list[str], batch: int = 64, desc: str = "embedding") -> torch.Tensor:
    return _by_length(bert, tok, texts, batch, desc)  # (N, H)


def logits_of(model, tok, texts: list[str], batch: int = 64, desc: str = "evaluating") -> torch.Tensor:
    model.eval()
    return _by_length(lambda ids, mask: model(input_ids=ids, attention_mask=mask), tok, texts, batch, desc)


def _adamw_cosine(params, lr: float, steps: int):
    """The optimiser every trained method uses: AdamW, no weight decay, cosine decay to 0 over ``steps``."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + np.cos(np.pi * s / steps)))


class Trial:
    """One model trained with one learning rate along a fixed list of batches, resumable: ``advance(k)``
    trains up to step ``k`` (successive halving stops a trial at a rung and may continue it later).
    AdamW with cosine decay over ``steps`` (the full budget) on whatever requires grad."""

    def __init__(self, model, tok, texts, labels, plan: list, *, lr: float, steps: int) -> None:
        self.model, self.tok, self.texts, self.plan, self.lr, self.steps = model, tok, texts, plan, lr, steps
        self.y = torch.tensor(labels)
        self.opt, self.sched = _adamw_cosine([p for p in model.parameters() if p.requires_grad], lr, steps)
        self.step, self.losses, self.seconds = 0, [], 0.0
        self.curve: list[tuple[int, float]] = []  # (step, validation accuracy) at each evaluation

    def advance(self, to_step: int, bar: Progress | None = None) -> None:
        self.model.train()
        t0 = time.perf_counter()
        for idx in self.plan[self.step: to_step]:
            ids, mask = self.tok([self.texts[i] for i in idx])
            loss = nn.functional.cross_entropy(self.model(input_ids=ids, attention_mask=mask), self.y[idx])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.sched.step()
            self.losses.append(loss.item())
            self.step += 1
            if bar is not None:
                bar.update(1, f"loss {np.mean(self.losses[-20:]):.3f}")
        self.seconds += time.perf_counter() - t0


def train_model(model, tok, texts, labels, *, steps: int, batch: int, lr: float, seed: int, desc: str,
                evaluate=None, eval_every: int = 0):
    """``--full`` (release 1.2.0's protocol): ``steps`` random batches, evaluating along the way.

    Returns (losses per step, training seconds, curve): ``curve`` holds (step, evaluate()) every
    ``eval_every`` steps and at the last step when ``evaluate`` is given; evaluation time is not
    counted in the training seconds."""
    trial = Trial(model, tok, texts, labels, list(batches(len(texts), batch, steps, seed)), lr=lr, steps=steps)
    with Progress(steps, desc) as bar:
        marks = sorted(set(range(eval_every, steps + 1, eval_every) if eval_every else ()) | {steps})
        for mark in marks:
            trial.advance(mark, bar)
            if evaluate is not None:
                trial.curve.append((mark, float(evaluate())))
    return trial.losses, trial.seconds, trial.curve


def calibrate_steps(model, tok, texts, labels, plan: list, lengths, *, probes: int = 4) -> tuple[float, float]:
    """(seconds per step, seconds per padded token) of training ``model``, fitted on ``probes`` real
    batches of the plan spread over its padded sizes (after one warm-up step): the up-front estimate.
    The model's trainable parameters are left as they were (a throw-away optimiser with lr 0)."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    y = torch.tensor(labels)
    by_size = sorted(plan, key=lambda idx: padded_tokens(lengths, idx))
    picks = [by_size[0]] + [by_size[min(len(by_size) - 1, int(q * len(by_size)))]
                            for q in np.linspace(0.1, 0.95, probes)]
    model.train()
    best: dict[int, float] = {}  # each probe timed twice, the faster kept: a burst of other load is not the cost
    for k, idx in enumerate(picks + picks[1:]):
        t0 = time.perf_counter()
        ids, mask = tok([texts[i] for i in idx])
        loss = nn.functional.cross_entropy(model(input_ids=ids, attention_mask=mask), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if k:  # the first call warms up
            j = (k - 1) % (len(picks) - 1)
            best[j] = min(best.get(j, float("inf")), time.perf_counter() - t0)
    sizes = [padded_tokens(lengths, picks[j + 1]) for j in sorted(best)]
    times = [best[j] for j in sorted(best)]
    opt.zero_grad(set_to_none=True)
    return _fit_line(sizes, times)


def _fit_line(sizes, times) -> tuple[float, float]:
    """Least squares time = a + b * size with a, b >= 0 (a single size, or a negative slope: b only)."""
    x, t = np.asarray(sizes, float), np.asarray(times, float)
    if len(set(sizes)) > 1:
        b, a = np.polyfit(x, t, 1)
        if a >= 0 and b >= 0:
            return float(a), float(b)
    return 0.0, float(t.sum() / x.sum())


def train_head(X: torch.Tensor, y: list[int], *, steps: int, batch: int, lr: float, seed: int, plan=None):
    """A linear head on frozen embeddings with the same budget (and batches: ``plan``, else random ones)
    as the adapters: (head, losses, seconds)."""
    torch.manual_seed(seed)
    head = nn.Linear(X.shape[1], 2)
    opt, sched = _adamw_cosine(head.parameters(), lr, steps)
    yt = torch.tensor(y)
    losses = []
    t0 = time.perf_counter()
    for idx in plan if plan is not None else batches(len(y), batch, steps, seed):
        loss = nn.functional.cross_entropy(head(X[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return head, losses, time.perf_counter() - t0


def logistic_probe(X: torch.Tensor, y: list[int], l2: float = 1e-3):
    """Logistic regression on standardised frozen embeddings, full batch L-BFGS: (predict, seconds)."""
    t0 = time.perf_counter()
    mu, sd = X.mean(0), X.std(0) + 1e-6
    Z = ((X - mu) / sd).double()
    w = torch.zeros(X.shape[1], 2, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    yt = torch.tensor(y)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(Z @ w + b, yt) + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    seconds = time.perf_counter() - t0
    return (lambda Xt: (((Xt - mu) / sd).double() @ w + b).argmax(1)), seconds
