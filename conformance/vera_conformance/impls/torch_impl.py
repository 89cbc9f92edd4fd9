"""vera_torch through the public door: a one-layer model per case, on CPU or CUDA."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..protocol import Implementation, LayerCase, LoadedAdapter, Trained
from ..torch_helpers import Conv1D, backward_arrays, run_case, sgd_steps

_DT = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16", "float64": "float64"}


class TorchImpl(Implementation):
    name = "vera_torch (PyTorch)"
    capabilities = frozenset({"generator", "forward", "backward", "merge", "unmerge", "train", "files",
                              "merged_forward"})
    dtypes = frozenset({"float32", "float16", "bfloat16", "float64"})

    def __init__(self, fused: bool | None = None) -> None:
        self.torch = torch
        self.devices = frozenset({"cpu", "cuda"} if torch.cuda.is_available() else {"cpu"})
        self.fused = fused  # None: the layer's own choice; False, "x", "h": force a path (VeraLayer.fused)
        if fused is not None:
            path = {False: "factored", "x": "fused", "h": "fused, h kept", True: "fused"}[fused]
            self.name = f"vera_torch (PyTorch, {path} path)"

    def projection(self, seed, r, n_in, n_out, group, device):
        from vera_torch.philox import projection
        A, B = projection(seed, r, n_in, n_out, group, device=device)
        return A.cpu().numpy(), B.cpu().numpy()

    def philox(self, counters, key, device):
        from vera_torch.philox import philox_words
        t = self.torch.as_tensor(counters.astype(np.int64), device=device)
        w = philox_words(t[:, 0], t[:, 1], t[:, 2], t[:, 3], (int(key[0]), int(key[1])))
        return np.stack([x.cpu().numpy() for x in w], axis=1).astype(np.uint32)

    def _model(self, c: LayerCase):
        torch = self.torch
        from torch import nn
        from vera_torch import VeraConfig, get_vera_model
        dt = getattr(torch, _DT[c.dtype])
        in_f, out_f = c.in_features, c.out_features
        if c.layout == "linear":
            base = nn.Linear(in_f, out_f, bias=c.bias is not None)
        else:
            base = Conv1D(in_f, out_f, c.bias is not None)
        base = base.to(dtype=dt)
        with torch.no_grad():
            base.weight.copy_(torch.from_numpy(c.W))
            if c.bias is not None:
                base.bias.copy_(torch.from_numpy(c.bias))
        # a second, larger layer makes the shared projection (n_in, n_out) as in the case (spec 2.2)
        holder = Holder(base, c.n_in, c.n_out)
        holder = holder.to(dtype=dt, device=c.device)
        m = get_vera_model(holder, VeraConfig(r=c.r, target_modules=["layer", "pad"], seed=c.seed,
                                              dropout=c.dropout, sharing="shared",
                                              vector_dtype="float64" if c.dtype == "float64" else "float32"))
        if c.group:
            for layer in m.vera_layers():  # the case's group (spec 2.4) for the layer under test
                spec = layer.proj["default"]
                layer.proj["default"] = spec._replace(group=c.group)
        layer = m.base_model.layer
        layer.fused = self.fused
        with torch.no_grad():
            layer.vera_lambda_d["default"].copy_(torch.from_numpy(c.lambda_d))
            layer.vera_lambda_b["default"].copy_(torch.from_numpy(c.lambda_b))
        return m, layer, dt

    def _x(self, c, dt, grad=False):
        x = self.torch.tensor(c.x, dtype=dt, device=c.device)
        return x.requires_grad_(grad)

    def forward(self, c: LayerCase):
        m, layer, dt = self._model(c)
        with self.torch.no_grad():
            return run_case(c, m, self._x(c, dt)).double().cpu().numpy()

    def backward(self, c: LayerCase):
        m, layer, dt = self._model(c)
        return backward_arrays(c, m, self._x(c, dt), layer.vera_lambda_d["default"], layer.vera_lambda_b["default"])

    def merge(self, c: LayerCase):
        m, layer, dt = self._model(c)
        layer.merge("default")  # the layer under test only (the pad layer has sizes, no real weight)
        return layer.base_layer.weight.detach().double().cpu().numpy()

    def unmerge(self, c: LayerCase, W_merged):
        m, layer, dt = self._model(c)
        layer.merge("default")  # public API only: merge, then put the given merged weight in place, then unmerge
        with self.torch.no_grad():
            layer.base_layer.weight.copy_(self.torch.from_numpy(W_merged))
        layer.unmerge("default")
        return layer.base_layer.weight.detach().double().cpu().numpy()

    def merged_forward(self, c: LayerCase):
        """The layer merged by its own merge(), its forward; unmerged by its unmerge(), the forward again."""
        m, layer, dt = self._model(c)
        layer.merge("default")
        with self.torch.no_grad():
            y_m = run_case(c, m, self._x(c, dt)).double().cpu().numpy()
            layer.unmerge("default")
            return y_m, run_case(c, m, self._x(c, dt)).double().cpu().numpy()

    def train_steps(self, c: LayerCase, lr: float, steps: int) -> Trained:
        m, layer, dt = self._model(c)
        view = next(v for v in m.adapter_view().layers if v.path == "layer")
        A, B = m.adapter_view().projections[view.group]
        return sgd_steps(c, m, layer, self._x(c, dt), lr, steps, lambda_d=layer.vera_lambda_d["default"],
                         lambda_b=layer.vera_lambda_b["default"], weight=view.base_layer.weight, A=A, B=B,
                         bias=view.base_layer.bias)

    def _file_model(self, modules, extra=None, extra_dtypes=None):
        """A model with exactly the file's modules (and the owners of its extra tensors, in their dtypes)."""
        torch = self.torch
        from torch import nn

        def at(path):
            parent = root
            for p in path:
                if not hasattr(parent, p):
                    parent.add_module(p, nn.Module())
                parent = getattr(parent, p)
            return parent

        root = nn.Module()
        for name, fi, fo, layout in modules:
            parts = name.split(".")
            at(parts[:-1]).add_module(parts[-1], nn.Linear(fi, fo) if layout == "linear" else Conv1D(fi, fo, True))
        for key, arr in (extra or {}).items():
            *owner, pname = key.split(".")
            dt = getattr(torch, (extra_dtypes or {}).get(key, "float32"))
            at(owner).register_parameter(pname, nn.Parameter(torch.zeros(np.shape(arr), dtype=dt)))
        return root

    def load_adapter(self, path) -> LoadedAdapter:
        import vera_ref
        from vera_torch import VeraModel
        ad = vera_ref.load_adapter(path)  # the torch side loads through the same checks
        mods = [(m.name, m.in_features, m.out_features, m.layout) for m in ad.config.modules]
        vm = VeraModel.from_adapter(self._file_model(mods, {k: v for k, (v, _) in ad.extra.items()}), ad,
                                    check_fingerprint=False)
        layers = {n: vm.base_model.get_submodule(n) for n, *_ in mods}
        c = vm.vera_configs["default"]
        extra = {}
        for head in vm.adapter_view().heads:  # the trained copies of extra modules (spec 4.4)
            for pname, p in head.module.named_parameters():
                key = f"{head.path}.{pname}"
                if key in ad.extra:
                    extra[key] = p.detach().double().numpy()
        return LoadedAdapter(c.r, c.generator, None if c.generator == "stored" else c.seed, mods,
                             {n: l.vera_lambda_d["default"].detach().double().numpy() for n, l in layers.items()},
                             {n: l.vera_lambda_b["default"].detach().double().numpy() for n, l in layers.items()},
                             c.vector_dtype_name, extra, c.sharing)

    def save_adapter(self, adapter: LoadedAdapter, path) -> None:
        """vera_torch writes what it holds: the content loaded into a model with its modules (and base
        weights, when given), then saved by VeraModel.save_adapter with its layout, name and provenance."""
        torch = self.torch
        from vera_torch import VeraModel
        model = self._file_model(adapter.modules, adapter.extra, adapter.extra_dtypes)
        for name, W in (adapter.base_weights or {}).items():
            with torch.no_grad():
                model.get_submodule(name).weight.copy_(torch.from_numpy(np.asarray(W, np.float32)))
        vm = VeraModel.from_adapter(model, adapter.to_adapter(), check_fingerprint=False)
        bm = adapter.base_model or {}
        vm.save_adapter(path, fingerprint=adapter.base_weights is not None, packed=adapter.tensor_layout == "packed",
                        base_model=bm, provenance=adapter.provenance or None)


class Holder(nn.Module):
    """The layer under test, plus a larger unused one that sets the shared projection's size (spec 2.2)."""

    def __init__(self, layer, n_in, n_out):
        super().__init__()
        self.layer = layer
        if n_in * n_out <= 1 << 22:
            self.pad = nn.Linear(n_in, n_out, bias=False)
        else:  # only its sizes matter (spec 2.2): a 1 x 1 weight, so n_in = n_out = 16384 costs no 1 GiB matrix
            self.pad = nn.Linear(1, 1, bias=False)
            self.pad.in_features, self.pad.out_features = n_in, n_out

    def forward(self, x):
        return self.layer(x)


def make(fused: bool | str | None = None) -> TorchImpl:
    return TorchImpl(fused)


def make_factored() -> TorchImpl:
    return make(False)


def make_fused() -> TorchImpl:
    """The fused path keeping x (the vector gradients from dY^T x)."""
    return make("x")


def make_fused_h() -> TorchImpl:
    """The fused path keeping h = x A_l^T (the vector gradients from dY^T h)."""
    return make("h")
