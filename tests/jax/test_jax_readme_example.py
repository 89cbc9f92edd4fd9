"""The README's JAX/Flax example, run as written: PyTorch trains and Flax serves, then the reverse."""
import re

import pytest

pytest.importorskip("torch")
pytest.importorskip("jax")
pytest.importorskip("flax.nnx")
pytest.importorskip("optax")

from conftest import ROOT  # noqa: E402

EXAMPLE = '''\
import numpy as np
import torch
from torch import nn
import jax, jax.numpy as jnp, optax
from flax import nnx
from vera_torch import VeraConfig, VeraModel, get_vera_model
from vera_jax.nnx import VeraParam, apply_vera, load_adapter, save_adapter

class TorchMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 4)
    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))

class FlaxMLP(nnx.Module):
    def __init__(self, rngs):
        self.fc1, self.fc2 = nnx.Linear(16, 32, rngs=rngs), nnx.Linear(32, 4, rngs=rngs)
    def __call__(self, x):
        return self.fc2(jax.nn.relu(self.fc1(x)))

def torch_base():                                 # the frozen base model, the same every call
    torch.manual_seed(0)
    return TorchMLP()

def flax_base():                                  # the same weights in Flax: an nnx kernel is (in, out) = weight^T
    model, src = FlaxMLP(nnx.Rngs(0)), torch_base()
    for name in ("fc1", "fc2"):
        getattr(model, name).kernel[...] = jnp.asarray(getattr(src, name).weight.detach().numpy().T)
        getattr(model, name).bias[...] = jnp.asarray(getattr(src, name).bias.detach().numpy())
    return model

torch.manual_seed(1)
x, y = torch.randn(64, 16), torch.randint(0, 4, (64,))
xj, yj = jnp.asarray(x.numpy()), jnp.asarray(y.numpy())

# 1. train in PyTorch, serve in Flax
tm = get_vera_model(torch_base(), VeraConfig(r=8, target_modules=["fc1", "fc2"], seed=0))
opt = torch.optim.AdamW([p for p in tm.parameters() if p.requires_grad], lr=1e-2)
for _ in range(30):
    loss = nn.functional.cross_entropy(tm(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
tm.save_adapter("from_torch.safetensors")         # the vectors, the seed, checksums of A and B, base fingerprint
fm = flax_base()
load_adapter(fm, "from_torch.safetensors")        # every check of spec 4.6; A, B rebuilt in JAX from the seed
diff_torch_to_flax = np.abs(np.asarray(fm(xj)) - tm(x).detach().numpy()).max()
assert diff_torch_to_flax < 1e-3   # float32 both sides, each within C eps S (spec 5.2.3: C < 52.01 for the
                                   # two layers, eps = 2^-23, S < 40 for these inputs and weights): < 5e-4

# 2. train in Flax, serve in PyTorch
fm = flax_base()
apply_vera(fm, ["fc1", "fc2"], r=8, seed=1)
fopt = nnx.Optimizer(fm, optax.adamw(1e-2), wrt=VeraParam)    # only lambda_d and lambda_b train

@nnx.jit
def step(model, opt, x, y):
    def loss_fn(model):
        return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()
    loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, VeraParam))(model)
    opt.update(model, grads)
    return loss

for _ in range(30):
    step(fm, fopt, xj, yj)
save_adapter(fm, "from_flax.safetensors")
served = VeraModel.from_adapter(torch_base(), "from_flax.safetensors")   # checks the base fingerprint too
diff_flax_to_torch = np.abs(served(x).detach().numpy() - np.asarray(fm(xj))).max()
assert diff_flax_to_torch < 1e-3   # the same bound
print(f"max |difference|: torch -> flax {diff_torch_to_flax:.1e}, flax -> torch {diff_flax_to_torch:.1e}")
'''


def test_readme_jax_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    scope = {"__name__": "__readme__"}
    exec(compile(EXAMPLE, "README JAX example", "exec"), scope)
    assert "max |difference|" in capsys.readouterr().out
    # training happened on both sides: the files hold vectors that are no longer the spec 3.9 initial ones
    import numpy as np
    import vera_ref
    for name in ("from_torch.safetensors", "from_flax.safetensors"):
        ad = vera_ref.load_adapter(tmp_path / name)
        assert any(np.abs(v).max() > 1e-3 for v in ad.lambda_b.values()), name
    # the README's bound, derived: each float32 side within C eps S of the exact model (spec 5.2.3, C summed
    # over the two layers, relu 1-Lipschitz), so the sides differ by at most 2 C eps max S on any machine
    from vera_ref.tolerance import constant, forward_magnitude
    c = sum(constant("forward", "float32", N=64, in_features=i, out_features=o, r=8) for i, o in ((16, 32), (32, 4)))
    base, x = scope["torch_base"](), np.abs(scope["x"].double().numpy())
    for name, diff in (("from_torch.safetensors", "diff_torch_to_flax"), ("from_flax.safetensors", "diff_flax_to_torch")):
        ad, S = vera_ref.load_adapter(tmp_path / name), x
        A, B = ad.projection(0)
        for n in ("fc1", "fc2"):
            W, b = (t.detach().double().numpy() for t in (getattr(base, n).weight, getattr(base, n).bias))
            S = forward_magnitude(S, W, b, A, B, ad.lambda_d[n].astype(np.float64), ad.lambda_b[n].astype(np.float64))
        assert S.max() < 40 and c < 52.01, (name, S.max(), c)  # the premises the README's comment states
        assert scope[diff] <= 2 * c * 2.0**-23 * S.max(), (name, scope[diff])


def test_readme_carries_this_example():
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    if not any("vera_jax" in b for b in blocks):
        pytest.skip("the README has no vera_jax example yet")
    assert EXAMPLE in blocks, "the README's vera_jax example differs from tests/jax/test_jax_readme_example.py"
