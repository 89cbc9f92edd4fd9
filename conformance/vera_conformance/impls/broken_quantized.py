"""Deliberately wrong implementations for checks_quantized.py: each must fail the
check named in ``CAUGHT_BY`` (tests/conformance/test_conformance.py asserts it).

Both are vera_torch on the kit's bitsandbytes layer with one bug seen in QLoRA-style code:
the adapter term computed in the base's compute dtype (the input cast to bfloat16/float16
for the adapter too, its vectors and projections rounded), and the quantized layer replaced
by a full-precision copy of its dequantized weight (right in float32, another base term
where the layer computes in bfloat16/float16).
"""
from __future__ import annotations

from .torch_quantized_impl import TorchQuantizedImpl, _arrays


class AdapterInComputeDtype(TorchQuantizedImpl):
    """The adapter term in the base's compute dtype: x, lambda_d, lambda_b, A and B rounded to it."""
    name = "broken: adapter term in the quantized base's compute dtype"

    def quantized(self, c, base):
        torch = self.torch
        m, ld, lb = self._model(c, base)
        layer = m.base_model[0]
        dt = getattr(base, "compute_dtype", None) or torch.float32
        x = torch.tensor(c.x, dtype=torch.float32, requires_grad=True)
        A, B = layer.sliced_projection("default", x.device)
        term = ((((x.to(dt) @ A.to(dt).t()) * ld.to(dt)) @ B.to(dt).t()) * lb.to(dt)).to(torch.float32)
        y = base.eval()(x) + term
        y.backward(torch.tensor(c.dy, dtype=y.dtype))
        return _arrays(y, x, ld, lb)


class DequantizedCopyBase(TorchQuantizedImpl):
    """The quantized layer swapped for nn.Linear holding its dequantized weight, in float32."""
    name = "broken: base replaced by a float32 copy of the dequantized weight"

    def quantized(self, c, base):
        torch = self.torch
        from torch import nn
        from vera_torch import quantized as Q
        lin = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(Q.dequantize(base))
            if base.bias is not None:
                lin.bias.copy_(base.bias.float())
        return super().quantized(c, lin)


CAUGHT_BY: dict = {AdapterInComputeDtype: "quantized", DequantizedCopyBase: "quantized"}
