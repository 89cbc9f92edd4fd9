"""A read-only view of one adapter of a VeraModel: the public seam for exporters.

``VeraModel.adapter_view(name)`` returns an ``AdapterView``: every adapted layer with its
base layer, dimensions, layout (spec 3.7), projection group (spec 2.4) and current
vectors, every module in ``modules_to_save`` with the adapter's trained copy, and the
full projection pair of each group (spec 2.1; a layer uses the leading slice of
spec 2.3). Exporters (``vera_onnx``) read this instead of the model's internals and
rebuild the model with ``VeraModel.replace_module`` and ``VeraModel.unwrapped``.

The view holds references, not copies: ``base_layer`` and ``module`` are the model's
own modules, ``lambda_d``/``lambda_b`` are detached tensors that share the
parameters' storage. Build a new view after the model changes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .config import VeraConfig


@dataclass(frozen=True)
class LayerView:
    """One adapted layer, seen for one adapter."""

    path: str  # dotted path from the base model root
    base_layer: nn.Module  # the wrapped nn.Linear / transformers Conv1D
    in_features: int
    out_features: int
    layout: str  # "linear" | "conv1d" (spec 3.7)
    group: int  # projection group (spec 2.4): 0 when shared, i + 1 for module i when per-module
    lambda_d: torch.Tensor  # (r,) detached, the adapter's current values
    lambda_b: torch.Tensor  # (out,) detached


@dataclass(frozen=True)
class HeadView:
    """One module in ``modules_to_save``."""

    path: str
    module: nn.Module  # the adapter's trained copy
    original: nn.Module  # the base model's module


@dataclass(frozen=True)
class AdapterView:
    """Everything an exporter needs about one adapter."""

    name: str
    config: VeraConfig
    layers: list[LayerView]  # in the adapter's module order (the file's order, spec 4.3)
    heads: list[HeadView]
    projections: dict[int, tuple[torch.Tensor, torch.Tensor]]  # group -> (A (r, n_in), B (n_out, r)), float32, CPU
