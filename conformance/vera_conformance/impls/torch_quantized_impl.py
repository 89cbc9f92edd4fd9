"""VeRA on bitsandbytes bases through the kit's ``quantized`` capability (checks_quantized.py):
vera_torch (``make``), and PEFT's VeRA on bnb layers (``make_peft``), code we did not write.

    vera-ref conformance --impl vera_conformance.impls.torch_quantized_impl:make
    vera-ref conformance --impl vera_conformance.impls.torch_quantized_impl:make_peft
"""
from __future__ import annotations

from ..protocol import Implementation, LayerCase


def _arrays(y, x, ld, lb):
    return (y.detach().double().numpy(), x.grad.double().numpy(), ld.grad.double().numpy(),
            lb.grad.double().numpy())


class TorchQuantizedImpl(Implementation):
    """vera_torch's VeraLayer on the kit's bitsandbytes layer (projections from the case's seed)."""

    name = "vera_torch on bitsandbytes bases"
    capabilities = frozenset({"quantized"})
    dtypes = frozenset({"float32"})
    layouts = frozenset({"linear"})

    def __init__(self) -> None:
        import torch
        self.torch = torch

    def _model(self, c: LayerCase, base):
        torch = self.torch
        from torch import nn
        from vera_torch import VeraConfig, get_vera_model
        m = get_vera_model(nn.Sequential(base), VeraConfig(r=c.r, target_modules=["0"], seed=c.seed))
        layer = m.base_model[0]
        with torch.no_grad():
            layer.vera_lambda_d["default"].copy_(torch.from_numpy(c.lambda_d))
            layer.vera_lambda_b["default"].copy_(torch.from_numpy(c.lambda_b))
        return m, layer.vera_lambda_d["default"], layer.vera_lambda_b["default"]

    def quantized(self, c: LayerCase, base):
        torch = self.torch
        m, ld, lb = self._model(c, base)
        m.eval()
        x = torch.tensor(c.x, dtype=torch.float32, requires_grad=True)
        y = m(x)
        y.backward(torch.tensor(c.dy, dtype=y.dtype))
        return _arrays(y, x, ld, lb)


class PeftQuantizedImpl(TorchQuantizedImpl):
    """PEFT's VeRA (peft.tuners.vera.bnb) on the kit's bitsandbytes layer, given the spec's projections
    (its vera_A / vera_B, as with save_projection=True)."""

    def __init__(self) -> None:
        super().__init__()
        import peft
        self.peft = peft
        self.name = f"PEFT {peft.__version__} VeRA on bitsandbytes bases"

    def _model(self, c: LayerCase, base):
        torch, peft = self.torch, self.peft
        from torch import nn
        pm = peft.get_peft_model(nn.Sequential(base), peft.VeraConfig(r=c.r, target_modules=["0"],
                                                                         save_projection=True, vera_dropout=0.0))
        layer = pm.base_model.model[0]
        with torch.no_grad():
            layer.vera_A["default"].copy_(torch.from_numpy(c.A))
            layer.vera_B["default"].copy_(torch.from_numpy(c.B))
            layer.vera_lambda_d["default"].copy_(torch.from_numpy(c.lambda_d))
            layer.vera_lambda_b["default"].copy_(torch.from_numpy(c.lambda_b))
        return pm, layer.vera_lambda_d["default"], layer.vera_lambda_b["default"]


def make() -> TorchQuantizedImpl:
    return TorchQuantizedImpl()


def make_peft() -> PeftQuantizedImpl:
    return PeftQuantizedImpl()

