from torch import nn
from vera_conformance import Implementation
from vera_conformance.torch_helpers import backward_arrays, case_tensors, leading_slices, run_case, sgd_steps

from plain_vera import PlainVeRALinear  # the layer under test (plain_vera.py, next to this file)


class Wrapped(Implementation):
    name = "PlainVeRALinear (third-party style)"
    capabilities = frozenset({"forward", "backward", "train"})  # no generator of its own, no files
    layouts = frozenset({"linear"})  # an nn.Linear layer only: conv1d cases are not drawn

    def _layer(self, c):  # the case's layer and input, in the case's dtype
        t = case_tensors(c)
        base = nn.Linear(c.in_features, c.out_features, bias=c.bias is not None)
        layer = PlainVeRALinear(base, *leading_slices(c), c.r, c.dropout)  # A[:, :in], B[:out] (spec 2.3)
        for p, k in ((base.weight, "W"), (base.bias, "bias"), (layer.lambda_d, "lambda_d"),
                     (layer.lambda_b, "lambda_b")):
            if t[k] is not None:
                p.data = t[k]
        return layer, t["x"]

    def forward(self, c):
        layer, x = self._layer(c)
        return run_case(c, layer, x).detach().double().numpy()

    def backward(self, c):
        layer, x = self._layer(c)
        return backward_arrays(c, layer, x, layer.lambda_d, layer.lambda_b)

    def train_steps(self, c, lr, steps):
        layer, x = self._layer(c)
        return sgd_steps(c, layer, layer, x, lr, steps, lambda_d=layer.lambda_d, lambda_b=layer.lambda_b,
                         weight=layer.base.weight, A=layer.vera_A, B=layer.vera_B, bias=layer.base.bias)


make = Wrapped  # vera-ref conformance --impl wrap_torch_layer:make (run in this folder)
