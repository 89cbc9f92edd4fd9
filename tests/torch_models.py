"""Small models for the torch tests, built from configs (no download)."""
import torch
from torch import nn


class Conv1D(nn.Module):
    """GPT-2's Conv1D layout (weight (in, out)), written here so no transformers import is needed."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) / nx**0.5)
        self.bias = nn.Parameter(torch.randn(nf) * 0.1)

    def forward(self, x):
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).reshape(*x.shape[:-1], self.nf)


class Block(nn.Module):
    def __init__(self, d: int, d_ff: int) -> None:
        super().__init__()
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.c_fc = Conv1D(d_ff, d)
        self.out = nn.Linear(d_ff, d)

    def forward(self, x):
        att = torch.softmax(self.query(x) @ self.key(x).transpose(-1, -2) / x.shape[-1] ** 0.5, -1) @ self.value(x)
        return x + self.out(torch.nn.functional.gelu(self.c_fc(x + att)))


class TinyNet(nn.Module):
    def __init__(self, d: int = 16, d_ff: int = 24, layers: int = 2, classes: int = 3) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(d, d_ff) for _ in range(layers))
        self.classifier = nn.Linear(d, classes)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return self.classifier(x.mean(-2))


def tiny_bert(num_labels: int = 3):
    from transformers import BertConfig, BertForSequenceClassification
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48, vocab_size=100,
        num_labels=num_labels, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)).eval()


def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100, n_positions=64,
                                      bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0,
                                      attn_pdrop=0.0)).eval()


def randomise(model, scale: float = 1.0) -> None:
    """Give every trainable vector random values, so an adapter is not a no-op."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "vera_lambda" in n:
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * scale)


class QV(nn.Module):
    """Two linears q (8 -> 6) and v (6 -> 5) with a tanh between: the smallest model with two adapted layers."""

    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(8, 6)
        self.v = nn.Linear(6, 5)

    def forward(self, x):
        return self.v(torch.tanh(self.q(x)))


class Headed(nn.Module):
    """q (8 -> 6), tanh, then a head (6 -> 2): an adapted layer and a module to save."""

    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(8, 6)
        self.act = nn.Tanh()
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(self.act(self.q(x)))
