"""A third-party-style torch VeRA layer, the one conformance/README.md wraps for the kit
("Wrapping a torch layer"): frozen base, shared A/B buffers, two trained vectors."""
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
