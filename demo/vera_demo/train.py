"""Training loops and baselines of the demo (all on the same split and step budget)."""
from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn
from tqdm import tqdm


def batches(n: int, size: int, steps: int, seed: int):
    """``steps`` index batches, reshuffling each epoch."""
    rng = np.random.default_rng(seed)
    order, pos = rng.permutation(n), 0
    for _ in range(steps):
        if pos + size > n:
            order, pos = rng.permutation(n), 0
        yield order[pos: pos + size]
        pos += size


@torch.no_grad()
def _by_length(fn, tok, texts: list[str], batch: int, desc: str) -> torch.Tensor:
    """fn(ids, mask) over batches of texts of similar length (less padding), in the input order."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = []
    for i in tqdm(range(0, len(texts), batch), desc=desc, leave=False):
        out.append(fn(*tok([texts[j] for j in order[i: i + batch]])))
    res = torch.cat(out)
    return res[torch.argsort(torch.tensor(order))]


def embed(bert, tok, texts: list[str], batch: int = 64, desc: str = "embedding") -> torch.Tensor:
    return _by_length(bert, tok, texts, batch, desc)  # (N, H)


def logits_of(model, tok, texts: list[str], batch: int = 64, desc: str = "evaluating") -> torch.Tensor:
    model.eval()
    return _by_length(lambda ids, mask: model(input_ids=ids, attention_mask=mask), tok, texts, batch, desc)


def _adamw_cosine(params, lr: float, steps: int):
    """The optimiser every trained method uses: AdamW, no weight decay, cosine decay to 0 over ``steps``."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + np.cos(np.pi * s / steps)))


def train_model(model, tok, texts, labels, *, steps: int, batch: int, lr: float, seed: int, desc: str,
                evaluate=None, eval_every: int = 0):
    """AdamW with cosine decay on whatever requires grad.

    Returns (losses per step, training seconds, curve): ``curve`` holds (step, evaluate()) every
    ``eval_every`` steps and at the last step when ``evaluate`` is given; evaluation time is not
    counted in the training seconds."""
    opt, sched = _adamw_cosine([p for p in model.parameters() if p.requires_grad], lr, steps)
    y = torch.tensor(labels)
    losses, curve, eval_seconds = [], [], 0.0
    model.train()
    t0 = time.perf_counter()
    bar = tqdm(batches(len(texts), batch, steps, seed), total=steps, desc=desc, leave=False)
    for step, idx in enumerate(bar, 1):
        ids, mask = tok([texts[i] for i in idx])
        loss = nn.functional.cross_entropy(model(input_ids=ids, attention_mask=mask), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        if evaluate is not None and (step == steps or (eval_every and step % eval_every == 0)):
            t1 = time.perf_counter()
            curve.append((step, float(evaluate())))
            model.train()
            eval_seconds += time.perf_counter() - t1
    return losses, time.perf_counter() - t0 - eval_seconds, curve


def step_seconds(model, tok, texts, labels, *, batch: int, steps: int = 2) -> float:
    """Seconds per training step of ``model`` (for the demo's up-front time estimate); the model's
    trainable parameters are left as they were (a throw-away optimiser with lr 0)."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    y = torch.tensor(labels[:batch])
    ids, mask = tok(texts[:batch])
    model.train()
    times = []
    for _ in range(steps + 1):  # the first call warms up
        t0 = time.perf_counter()
        loss = nn.functional.cross_entropy(model(input_ids=ids, attention_mask=mask), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    opt.zero_grad(set_to_none=True)
    return float(np.median(times[1:]))


def train_head(X: torch.Tensor, y: list[int], *, steps: int, batch: int, lr: float, seed: int):
    """A linear head on frozen embeddings with the same budget as the adapters: (head, losses, seconds)."""
    torch.manual_seed(seed)
    head = nn.Linear(X.shape[1], 2)
    opt, sched = _adamw_cosine(head.parameters(), lr, steps)
    yt = torch.tensor(y)
    losses = []
    t0 = time.perf_counter()
    for idx in batches(len(y), batch, steps, seed):
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
