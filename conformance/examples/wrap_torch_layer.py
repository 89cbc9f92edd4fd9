"""A third-party-style torch VeRA layer, wrapped for the kit (conformance/README.md,
"Wrapping a torch layer"). Run from this folder:

    vera-ref conformance --impl wrap_torch_layer:make
"""
import torch
from torch import nn


class PlainVeRALinear(nn.Module):
    """VeRA as a third party writes it: frozen base, shared A/B buffers, two trained vectors."""

    def __init__(self, base: nn.Linear, A: torch.Tensor, B: torch.Tensor, r: int, dropout: float = 0.0):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.register_buffer("vera_A", A)  # (r, n_in), shared by every layer
        self.register_buffer("vera_B", B)  # (n_out, r)
        self.lambda_d = nn.Parameter(torch.full((r,), 0.1))
        self.lambda_b = nn.Parameter(torch.zeros(base.out_features))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        A, B = self.vera_A[:, :self.base.in_features], self.vera_B[:self.base.out_features]
        return self.base(x) + self.lambda_b * ((self.dropout(x) @ A.T * self.lambda_d) @ B.T)


# ---- the wrapper: everything the kit needs ---------------------------------------------------
from vera_conformance import Implementation  # noqa: E402
from vera_conformance.torch_helpers import case_tensors, run_case, sgd_steps  # noqa: E402


class Wrapped(Implementation):
    name = "PlainVeRALinear (third-party style)"
    capabilities = frozenset({"forward", "backward", "train"})  # no generator of its own, no files
    layouts = frozenset({"linear"})  # an nn.Linear layer only: conv1d cases are not drawn

    def _layer(self, c):
        t = case_tensors(c)
        base = nn.Linear(c.in_features, c.out_features, bias=c.bias is not None)
        layer = PlainVeRALinear(base, torch.from_numpy(c.A), torch.from_numpy(c.B), c.r, c.dropout)
        for p, v in ((base.weight, t["W"]), (base.bias, t["bias"]), (layer.lambda_d, t["lambda_d"]),
                     (layer.lambda_b, t["lambda_b"])):
            if v is not None:
                p.data.copy_(v)
        return layer, t

    def forward(self, c):
        layer, t = self._layer(c)
        with torch.no_grad():
            return run_case(c, layer, t["x"]).double().numpy()

    def backward(self, c):
        layer, t = self._layer(c)
        x = t["x"].requires_grad_()
        run_case(c, layer, x).backward(t["dy"])
        return x.grad.double().numpy(), layer.lambda_d.grad.double().numpy(), layer.lambda_b.grad.double().numpy()

    def train_steps(self, c, lr, steps):
        layer, t = self._layer(c)
        return sgd_steps(c, layer, layer, t["x"], lr, steps, lambda_d=layer.lambda_d, lambda_b=layer.lambda_b,
                         weight=layer.base.weight, A=layer.vera_A, B=layer.vera_B, bias=layer.base.bias)


make = Wrapped  # --impl wrap_torch_layer:make
