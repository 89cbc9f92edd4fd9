"""Mixed-adapter batches under data parallelism: every rank must reduce the same gradients, so a trained
adapter with no row in a rank's share of the batch must still get a gradient there (zeros), not None.
FSDP2 reduce-scatters (and DDP all-reduces) only the parameters that have a gradient: with None on one rank
and a tensor on another the collectives differ and gloo aborts ("Received data size doesn't match expected
size"; worker.py's fsdp_mixed on 4 ranks of 2 rows). Checked here on one process, from the rows one rank holds.

The fix: VeraLayer._mixed reshapes with the vector lengths, not -1, so a class with no rows works, and
VeraModel._mixed_batch, while gradients are enabled, adds every trainable adapter absent from the batch to
its class with no rows; worker.py's fsdp_mixed runs on 4 ranks (test_distributed.py KINDS4)."""
import sys

import pytest

torch = pytest.importorskip("torch")

from conftest import ROOT  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))
from torch_models import TinyNet  # noqa: E402

pytestmark = pytest.mark.distributed


def _model(trainable):
    from vera_torch import VeraConfig, get_vera_model
    torch.manual_seed(0)
    m = get_vera_model(TinyNet(), VeraConfig(r=8, target_modules=["query", "value", "c_fc"], seed=21))
    m.add_adapter("b", VeraConfig(r=4, target_modules=["query", "c_fc"], seed=5, d_initial=0.5))  # another class
    m.add_adapter("c", VeraConfig(r=8, target_modules=["query", "value", "c_fc"], seed=21, d_initial=0.3))  # same
    with torch.no_grad():
        for i, layer in enumerate(m.vera_layers()):
            for n in layer.vera_lambda_b:
                layer.vera_lambda_b[n].copy_(torch.linspace(-1, 1, layer.out_features) + i)
    m.set_trainable(trainable)
    return m


def test_a_trained_adapter_without_rows_gets_a_zero_gradient_and_changes_nothing_else():
    import torch.nn.functional as F
    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(4, 4, 16, generator=g), torch.randint(0, 3, (4,), generator=g)
    ids = ["default", None, "default", "default"]  # one rank's rows: neither b nor c
    alone, all3 = _model(["default"]), _model(["default", "b", "c"])
    out_alone, out_all = alone(x, adapter_ids=ids), all3(x, adapter_ids=ids)
    assert torch.equal(out_alone, out_all)  # the rows' outputs do not depend on which adapters train
    F.cross_entropy(out_alone, y).backward()
    F.cross_entropy(out_all, y).backward()
    got = {n: p.grad for n, p in all3.named_parameters() if p.requires_grad}
    want = {n: p.grad for n, p in alone.named_parameters() if p.requires_grad}
    for n, gr in want.items():
        assert torch.equal(got[n], gr), n
    absent = {n: gr for n, gr in got.items() if n not in want}
    assert len(absent) == 20 and all(gr is not None and not gr.any() for gr in absent.values()), \
        sorted(n for n, gr in absent.items() if gr is None)[:3]
