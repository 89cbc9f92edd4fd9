"""Model factories for the export-onnx CLI tests: () -> (model, example args, input names)."""
import torch

from torch_models import TinyNet


def tiny():
    torch.manual_seed(0)
    return TinyNet(), (torch.randn(2, 3, 16),), ["x"]
