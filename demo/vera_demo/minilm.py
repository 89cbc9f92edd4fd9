"""A plain BERT encoder over safetensors weights, with the tokenizers library (no transformers).

Module names follow Hugging Face's BertModel (``encoder.layer.{i}.attention.self.query``),
so the checkpoint loads as is and VeRA targets ``query`` / ``value`` by suffix.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn


class SelfAttention(nn.Module):
    def __init__(self, h: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = nn.Linear(h, h), nn.Linear(h, h), nn.Linear(h, h)

    def forward(self, x: torch.Tensor, mask_add: torch.Tensor) -> torch.Tensor:  # x (B, T, H)
        B, T, H = x.shape
        split = lambda t: t.view(B, T, self.heads, H // self.heads).transpose(1, 2)  # noqa: E731  (B, nh, T, hd)
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(H // self.heads) + mask_add, -1)
        return (att @ v).transpose(1, 2).reshape(B, T, H)


class _DenseNorm(nn.Module):
    def __init__(self, d_in: int, h: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, h)
        self.LayerNorm = nn.LayerNorm(h, eps=eps)

    def forward(self, x, residual):
        return self.LayerNorm(self.dense(x) + residual)


class Attention(nn.Module):
    def __init__(self, h: int, heads: int, eps: float) -> None:
        super().__init__()
        self.self = SelfAttention(h, heads)
        self.output = _DenseNorm(h, h, eps)

    def forward(self, x, mask_add):
        return self.output(self.self(x, mask_add), x)


class Intermediate(nn.Module):
    def __init__(self, h: int, i: int) -> None:
        super().__init__()
        self.dense = nn.Linear(h, i)

    def forward(self, x):
        return nn.functional.gelu(self.dense(x))


class Layer(nn.Module):
    def __init__(self, h: int, heads: int, i: int, eps: float) -> None:
        super().__init__()
        self.attention = Attention(h, heads, eps)
        self.intermediate = Intermediate(h, i)
        self.output = _DenseNorm(i, h, eps)

    def forward(self, x, mask_add):
        a = self.attention(x, mask_add)
        return self.output(self.intermediate(a), a)


class Embeddings(nn.Module):
    def __init__(self, cfg: dict) -> None:
        super().__init__()
        h = cfg["hidden_size"]
        self.word_embeddings = nn.Embedding(cfg["vocab_size"], h)
        self.position_embeddings = nn.Embedding(cfg["max_position_embeddings"], h)
        self.token_type_embeddings = nn.Embedding(cfg["type_vocab_size"], h)
        self.LayerNorm = nn.LayerNorm(h, eps=cfg["layer_norm_eps"])

    def forward(self, ids):  # (B, T)
        pos = torch.arange(ids.shape[1], device=ids.device)
        return self.LayerNorm(self.word_embeddings(ids) + self.position_embeddings(pos)[None]
                              + self.token_type_embeddings(torch.zeros_like(ids)))


class Encoder(nn.Module):
    def __init__(self, cfg: dict) -> None:
        super().__init__()
        self.layer = nn.ModuleList(Layer(cfg["hidden_size"], cfg["num_attention_heads"], cfg["intermediate_size"],
                                         cfg["layer_norm_eps"]) for _ in range(cfg["num_hidden_layers"]))


class Bert(nn.Module):
    """input_ids, attention_mask (B, T) -> mean-pooled sentence embedding (B, H)."""

    def __init__(self, cfg: dict) -> None:
        super().__init__()
        self.embeddings = Embeddings(cfg)
        self.encoder = Encoder(cfg)

    def hidden(self, ids, mask):
        x = self.embeddings(ids)
        mask_add = (1.0 - mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min  # (B, 1, 1, T)
        for layer in self.encoder.layer:
            x = layer(x, mask_add)
        return x  # (B, T, H)

    def forward(self, ids, mask):
        m = mask[..., None].to(torch.float32)
        return (self.hidden(ids, mask) * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, H)


class Classifier(nn.Module):
    """Sentence embedding -> 2 logits: the model the demo finetunes and ships."""

    def __init__(self, cfg: dict, classes: int = 2, bert: Bert | None = None) -> None:
        super().__init__()
        self.bert = bert if bert is not None else Bert(cfg)  # pass a loaded encoder to skip a random init
        self.classifier = nn.Linear(cfg["hidden_size"], classes)

    def forward(self, input_ids, attention_mask):
        return self.classifier(self.bert(input_ids, attention_mask))


def load_bert(model_dir: Path) -> tuple[Bert, dict]:
    from safetensors.torch import load_file
    cfg = json.loads((model_dir / "config.json").read_text())
    bert = Bert(cfg)
    state = {k: v for k, v in load_file(model_dir / "model.safetensors").items()
             if not k.startswith("pooler.") and k != "embeddings.position_ids"}
    bert.load_state_dict(state, strict=True)
    return bert.eval(), cfg


class Tokenizer:
    """tokenizers.Tokenizer from tokenizer.json, truncation at max_len, dynamic padding per batch."""

    def __init__(self, model_dir: Path, max_len: int = 64) -> None:
        from tokenizers import Tokenizer as HFTok
        self.tok = HFTok.from_file(str(model_dir / "tokenizer.json"))
        self.tok.enable_truncation(max_len)
        self.tok.enable_padding(pad_id=0, pad_token="[PAD]")
        self._unpadded = HFTok.from_file(str(model_dir / "tokenizer.json"))  # for lengths: its file may pad
        self._unpadded.enable_truncation(max_len)
        self._unpadded.no_padding()

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tok.encode_batch(texts)
        ids = torch.tensor([e.ids for e in enc], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.long)
        return ids, mask

    def lengths(self, texts: list[str]) -> list[int]:
        """Tokens of each text after truncation (what a batch of it pads to: its longest)."""
        return [len(e.ids) for e in self._unpadded.encode_batch(texts)]
