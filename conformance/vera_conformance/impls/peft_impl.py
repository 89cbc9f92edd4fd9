"""PEFT's own VeRA layer (peft.tuners.vera) as a third-party implementation.

Code we did not write, through the same door: PEFT is given the spec's projections
(its vera_A / vera_B buffers, as with save_projection=True) and computes forward,
backward, merge and unmerge itself. PEFT's generator is MT19937 (not the spec's) and
its files are not spec files, so it claims neither; those checks skip with the reason.
The wrapper builds each case in ``case.dtype`` and declares float32 only: the kit probes
float16, bfloat16 and float64 and checks them (PEFT passes all four).
"""
from __future__ import annotations

import numpy as np

from ..protocol import Implementation, LayerCase, Trained
from ..torch_helpers import run_case, sgd_steps, torch_dtype


class PeftImpl(Implementation):
    capabilities = frozenset({"forward", "backward", "merge", "unmerge", "train", "merged_forward"})
    dtypes = frozenset({"float32"})  # the others are probed (runner.probe_dtype), then checked

    def __init__(self) -> None:
        import peft
        import torch
        self.torch, self.peft = torch, peft
        self.name = f"PEFT {peft.__version__} VeRA layer"

    def _model(self, c: LayerCase):
        torch, peft = self.torch, self.peft
        from torch import nn
        from transformers.pytorch_utils import Conv1D

        conv = c.layout == "conv1d"

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                # PEFT sizes its shared pair from the largest targeted layer (spec 2.2): "pad" sets (n_in, n_out)
                if conv:
                    self.lin, self.pad = Conv1D(c.out_features, c.in_features), Conv1D(c.n_out, c.n_in)
                else:
                    self.lin, self.pad = nn.Linear(c.in_features, c.out_features), nn.Linear(c.n_in, c.n_out)

            def forward(self, x):
                return self.lin(x)

        net = Net().to(torch_dtype(c))  # the case's dtype before its values go in (W0 exactly as given)
        with torch.no_grad():
            net.lin.weight.copy_(torch.from_numpy(c.W))
            if c.bias is not None:
                net.lin.bias.copy_(torch.from_numpy(c.bias))
            else:
                net.lin.bias.zero_()
        pm = peft.get_peft_model(net, peft.VeraConfig(r=c.r, target_modules=["lin", "pad"], save_projection=True,
                                                      vera_dropout=c.dropout, fan_in_fan_out=conv))
        pm = pm.to(torch_dtype(c))  # the case's dtype (the kit probes the dtypes PEFT is not declared for)
        layer = pm.base_model.model.lin
        with torch.no_grad():
            layer.vera_A["default"].copy_(torch.from_numpy(c.A))
            layer.vera_B["default"].copy_(torch.from_numpy(c.B))
            layer.vera_lambda_d["default"].copy_(torch.from_numpy(c.lambda_d))
            layer.vera_lambda_b["default"].copy_(torch.from_numpy(c.lambda_b))
        return pm, layer

    def forward(self, c: LayerCase):
        pm, _ = self._model(c)
        with self.torch.no_grad():
            return run_case(c, pm, self.torch.tensor(c.x, dtype=torch_dtype(c))).double().numpy()

    def backward(self, c: LayerCase):
        pm, layer = self._model(c)
        x = self.torch.tensor(c.x, dtype=torch_dtype(c), requires_grad=True)
        y = run_case(c, pm, x)
        y.backward(self.torch.tensor(c.dy, dtype=y.dtype))
        return (x.grad.double().numpy(), layer.vera_lambda_d["default"].grad.double().numpy(),
                layer.vera_lambda_b["default"].grad.double().numpy())

    def train_steps(self, c: LayerCase, lr: float, steps: int) -> Trained:
        pm, layer = self._model(c)
        x = self.torch.tensor(c.x, dtype=torch_dtype(c))
        return sgd_steps(c, pm, layer, x, lr, steps, lambda_d=layer.vera_lambda_d["default"],
                         lambda_b=layer.vera_lambda_b["default"], weight=layer.base_layer.weight,
                         A=layer.vera_A["default"], B=layer.vera_B["default"], bias=layer.base_layer.bias
                         if c.bias is not None else None)

    def merge(self, c: LayerCase):
        pm, layer = self._model(c)
        pm.merge_adapter()
        return layer.base_layer.weight.detach().double().numpy()

    def merged_forward(self, c: LayerCase):
        """merge_adapter(), the model's forward; unmerge_adapter(), the forward again (PEFT's own flags)."""
        pm, _ = self._model(c)
        x = self.torch.tensor(c.x, dtype=torch_dtype(c))
        with self.torch.no_grad():
            pm.merge_adapter()
            y_m = run_case(c, pm, x).double().numpy()
            pm.unmerge_adapter()
            return y_m, run_case(c, pm, x).double().numpy()

    def unmerge(self, c: LayerCase, W_merged):
        pm, layer = self._model(c)
        with self.torch.no_grad():
            layer.base_layer.weight.copy_(self.torch.from_numpy(W_merged))
        layer.merged_adapters = ["default"]
        pm.unmerge_adapter()
        return layer.base_layer.weight.detach().double().numpy()


def make() -> PeftImpl:
    return PeftImpl()
