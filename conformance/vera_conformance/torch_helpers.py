"""Helpers for wrapping a torch-based VeRA implementation for the kit (README of the kit,
"Wrapping a torch layer"): the case's fixed dropout mask in place of torch's random one, the
leading slices of spec 2.3, tensors from a case, and plain SGD steps returning ``Trained``.

    from vera_conformance import Implementation
    from vera_conformance.torch_helpers import backward_arrays, case_tensors, leading_slices, run_case, sgd_steps
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import torch
from torch import nn

from .protocol import LayerCase, NoGradient, Trained

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                "float64": torch.float64, "tf32": torch.float32}


def torch_dtype(case: LayerCase) -> torch.dtype:
    return TORCH_DTYPES[case.dtype]


def leading_slices(case: LayerCase, device="cpu", dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
    """spec 2.3: the layer's A_l = A[:, :in] (r, in) and B_l = B[:out] (out, r) from the case's projections,
    in ``dtype`` (default: the case's, as a layer of that dtype holds them; spec 5.2.3 lets float16 and
    bfloat16 round the binary32 A and B)."""
    dtype = torch_dtype(case) if dtype is None else dtype
    A = torch.tensor(case.A[:, :case.in_features], dtype=dtype, device=device)  # copies: never the case's memory
    B = torch.tensor(case.B[:case.out_features], dtype=dtype, device=device)
    return A, B


def case_tensors(case: LayerCase) -> dict[str, torch.Tensor | None]:
    """x, W, bias, lambda_d, lambda_b, dy as tensors of the case's dtype on its device: copies, so
    an optimizer stepping them in place never changes the case (torch.as_tensor would share a
    float64 array's memory)."""
    dt, dev = torch_dtype(case), case.device
    t = lambda a: None if a is None else torch.tensor(np.asarray(a), dtype=dt, device=dev)  # noqa: E731
    return {"x": t(case.x), "W": t(case.W), "bias": t(case.bias), "lambda_d": t(case.lambda_d),
            "lambda_b": t(case.lambda_b), "dy": t(case.dy)}


@contextlib.contextmanager
def fixed_dropout(mask: torch.Tensor) -> Iterator[None]:
    """Inside the block, every torch dropout call (functional or nn.Dropout) computes
    x * mask / (1 - p) with the given 0/1 mask (spec 3.3) instead of drawing one."""
    real = torch.nn.functional.dropout

    def dropout(t, p=0.5, training=True, inplace=False):
        return t * mask.to(t.dtype) / (1 - p) if training and p > 0 else t

    torch.nn.functional.dropout = dropout
    try:
        yield
    finally:
        torch.nn.functional.dropout = real


def run_case(c: LayerCase, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """model(x) as the case asks: training mode with the case's fixed dropout mask, or
    evaluation mode (``model.eval()``: dropout must then be the identity) when it has none."""
    if c.dropout_mask is None:
        model.eval()
        return model(x)
    model.train()
    mask = torch.tensor(c.dropout_mask, device=x.device)
    with fixed_dropout(mask):
        return model(x)


def backward_arrays(c: LayerCase, model: nn.Module, x: torch.Tensor, lambda_d: torch.Tensor,
                    lambda_b: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The kit's backward (spec 3.4): run ``model(x)`` as the case asks, backpropagate the case's
    dy, and return (dx, d lambda_d, d lambda_b) as float64 arrays. ``x`` is made to require grad;
    a vector (or x) that gets no gradient raises ``NoGradient`` naming it ("lambda_b got no
    gradient: it does not reach the output") instead of an AttributeError on ``None.grad``."""
    x = x.detach().requires_grad_()
    for p in (lambda_d, lambda_b):
        p.grad = None
    y = run_case(c, model, x)
    y.backward(torch.as_tensor(c.dy, dtype=y.dtype, device=y.device))
    out = []
    for name, t in (("x", x), ("lambda_d", lambda_d), ("lambda_b", lambda_b)):
        if t.grad is None:
            raise NoGradient(name)
        out.append(t.grad.detach().to(torch.float64).cpu().numpy())
    return out[0], out[1], out[2]


def sgd_steps(c: LayerCase, model: nn.Module, layer: nn.Module, x: torch.Tensor, lr: float, steps: int,
              *, lambda_d: torch.Tensor, lambda_b: torch.Tensor, weight: torch.Tensor, A: torch.Tensor,
              B: torch.Tensor, bias: torch.Tensor | None = None) -> Trained:
    """``steps`` steps of torch.optim.SGD(lr) on sum(dy * model(x)) over every parameter of
    ``model`` that requires grad; returns the trainable parameters of ``layer`` (the adapted layer
    under test) and its tensors after training, read from the given tensors."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr)
    dy = torch.as_tensor(c.dy, dtype=x.dtype, device=x.device)
    for _ in range(steps):
        opt.zero_grad()
        (run_case(c, model, x) * dy).sum().backward()
        opt.step()
    np64 = lambda t: None if t is None else t.detach().to(torch.float64).cpu().numpy()  # noqa: E731
    return Trained(np64(lambda_d), np64(lambda_b),
                   {n: np64(p) for n, p in layer.named_parameters() if p.requires_grad},
                   np64(weight), np64(A), np64(B), np64(bias))


class Conv1D(nn.Module):
    """GPT-2's layout (transformers.pytorch_utils.Conv1D): weight (in, out), y = x W + b."""

    def __init__(self, nx: int, nf: int, bias: bool = True) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.zeros(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.weight
        return y + self.bias if self.bias is not None else y
