"""The VeRA adapter path as autograd functions (spec 3.2, 3.4).

Two ways to compute one layer, chosen per call by their cost (``choose_path``):

Factored (small r, or few rows N): y = base(x) + lambda_b * ((lambda_d * (x A_l^T)) B_l^T)
  ``project_in``  h = x A_l^T, saving nothing but the frozen A_l; backward dx = dh A_l.
    Layers that read the same x (query, key, value) share one h, so autograd sums their
    dh before one multiply by A_l.
  ``vera_delta``  out = lambda_b * v with v = (lambda_d * h) B_l^T; saves h and v only.
    du = (dY * lambda_b) B_l;  d lambda_b = sum_N dY * v;  d lambda_d = sum_N du * h;
    dh = du * lambda_d.   Per layer this keeps what PEFT's chain of ops keeps (h, v);
    per model less, since layers that read the same x keep one h between them.
  FLOPs, forward + backward: 2 N r (in + out) (the in-terms shared between layers).

Fused (large r): y = x (W0 + Delta W)^T + bias with Delta W = (lambda_b B_l)(lambda_d A_l)
  ``vera_linear``  one matmul with the merged weight; the base layer's dx is the fused
    dx. Keeps x (which the base layer keeps anyway) and the merged weight, no (N, r) h. With D = dY^T x (out, in) and E = D A_l^T (out, r):
    d lambda_b = (B_l * E) lambda_d,  d lambda_d = lambda_b^T (B_l * E).
  FLOPs beyond the base layer: 2 r in out + N in out.
"""
from __future__ import annotations

import torch


class _ProjectIn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, A_l: torch.Tensor) -> torch.Tensor:  # x (..., in), A_l (r, in)
        ctx.save_for_backward(A_l)
        return x @ A_l.t()  # (..., r)

    @staticmethod
    def backward(ctx, dh: torch.Tensor):
        (A_l,) = ctx.saved_tensors
        dx = dh @ A_l if ctx.needs_input_grad[0] else None  # (..., in)
        return dx, None


class _VeraDelta(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, lambda_d: torch.Tensor, lambda_b: torch.Tensor,
                B_l: torch.Tensor) -> torch.Tensor:  # h (..., r), lambda_d (r), lambda_b (out), B_l (out, r)
        v = (h * lambda_d) @ B_l.t()  # (..., out)
        ctx.save_for_backward(h, v, lambda_d, lambda_b, B_l)
        return v * lambda_b

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        h, v, lambda_d, lambda_b, B_l = ctx.saved_tensors
        need_h, need_d, need_b = ctx.needs_input_grad[:3]
        out, r = dy.shape[-1], h.shape[-1]
        d_lb = (dy * v).reshape(-1, out).sum(0) if need_b else None  # (out)
        dh = d_ld = None
        if need_h or need_d:
            du = (dy * lambda_b) @ B_l  # (..., r)
            d_ld = (du * h).reshape(-1, r).sum(0) if need_d else None  # (r)
            dh = du * lambda_d if need_h else None  # (..., r)
        return dh, d_ld, d_lb, None


class _VeraLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W0, bias, lambda_d, lambda_b, A_l, B_l, conv1d: bool):
        # x (..., in); W0 (out, in) or (in, out) for conv1d; A_l (r, in); B_l (out, r)
        dW = (lambda_b[:, None] * B_l) @ (lambda_d[:, None] * A_l)  # (out, in)
        W = W0 + (dW.t() if conv1d else dW).to(W0.dtype)
        W_lin = W.t() if conv1d else W  # (out, in)
        y = torch.nn.functional.linear(x, W_lin, bias)
        ctx.save_for_backward(x, W_lin, lambda_d, lambda_b, A_l, B_l)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, W_lin, lambda_d, lambda_b, A_l, B_l = ctx.saved_tensors
        dx = dy @ W_lin if ctx.needs_input_grad[0] else None  # (..., in)
        d_ld = d_lb = None
        if ctx.needs_input_grad[3] or ctx.needs_input_grad[4]:
            D = dy.reshape(-1, dy.shape[-1]).t().to(A_l.dtype) @ x.reshape(-1, x.shape[-1]).to(A_l.dtype)  # (out, in)
            BE = B_l * (D @ A_l.t())  # (out, r)
            d_lb = BE @ lambda_d  # (out)
            d_ld = lambda_b @ BE  # (r)
        return dx, None, None, d_ld, d_lb, None, None, None


def project_in(x: torch.Tensor, A_l: torch.Tensor) -> torch.Tensor:
    """h = x A_l^T with a backward that keeps only A_l."""
    return _ProjectIn.apply(x, A_l)


def vera_delta(h: torch.Tensor, lambda_d: torch.Tensor, lambda_b: torch.Tensor, B_l: torch.Tensor) -> torch.Tensor:
    """lambda_b * ((lambda_d * h) B_l^T), keeping h and v for the backward of spec 3.4."""
    return _VeraDelta.apply(h, lambda_d, lambda_b, B_l)


def vera_linear(x, W0, bias, lambda_d, lambda_b, A_l, B_l, conv1d: bool = False) -> torch.Tensor:
    """x (W0 + Delta W)^T + bias in one matmul, with the vector gradients of spec 3.4."""
    return _VeraLinear.apply(x, W0, bias, lambda_d, lambda_b, A_l, B_l, conv1d)


def choose_path(rows: int, r: int, in_f: int, out_f: int, training: bool) -> str:
    """'fused' when forming Delta W costs fewer FLOPs than the factored path, else 'factored'."""
    if training:
        factored = 2 * rows * r * (in_f + out_f)
        fused = 2 * r * in_f * out_f + rows * in_f * out_f
    else:
        factored = rows * r * (in_f + out_f)
        fused = r * in_f * out_f
    return "fused" if fused < factored else "factored"
