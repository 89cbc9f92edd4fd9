"""A meta-device start (init_empty_weights-style large-model loading), on one process: the model is built
on the meta device, the adapter attached, ``to_empty`` materialises it, the base weights are loaded and
``vd.init_vectors`` gives what ``to_empty`` left uninitialised: the spec 3.9 vectors and, for the ``stored``
generator, the projections drawn again from the seed (spec 2.5.2); stored projections read from a file come
back with ``vd.load_vectors``. Each rank does the same (tests/distributed/worker.py's fsdp_meta and
fsdp_meta_stored runs on 2 and 4 ranks); the checks here are bit-exact against a model built in memory."""
import sys

import pytest

torch = pytest.importorskip("torch")

from conftest import ROOT  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))
from torch_models import TinyNet  # noqa: E402

pytestmark = pytest.mark.distributed

CFG = dict(r=8, target_modules=["query", "value", "c_fc"], seed=21)


def _reference(generator):
    from vera_torch import VeraConfig, get_vera_model
    torch.manual_seed(0)
    m = get_vera_model(TinyNet(), VeraConfig(**CFG, generator=generator))
    with torch.no_grad():  # trained-looking vectors, so the projections reach the output
        for i, layer in enumerate(m.vera_layers()):
            layer.vera_lambda_d["default"].copy_(torch.linspace(-1, 1, 8) + i)
            layer.vera_lambda_b["default"].copy_(torch.linspace(0.5, -0.5, layer.out_features))
    return m


def _base_state(ref):
    return {k: v for k, v in ref.state_dict().items() if "vera_" not in k}  # what a base checkpoint holds


def _on_meta(generator, how):
    from vera_torch import VeraConfig, get_vera_model
    if how == "device":
        with torch.device("meta"):
            base = TinyNet()
        return get_vera_model(base, VeraConfig(**CFG, generator=generator))
    from accelerate import init_empty_weights
    with init_empty_weights():  # parameters on meta (the adapter's too), buffers in memory
        return get_vera_model(TinyNet(), VeraConfig(**CFG, generator=generator))


@pytest.mark.parametrize("how", ["device", "init_empty_weights"])
@pytest.mark.parametrize("generator", ["philox4x32-10", "stored"])
def test_meta_start_then_init_vectors_gives_the_in_memory_model(tmp_path, generator, how):
    from vera_torch import distributed as vd
    ref = _reference(generator)
    x = torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(3))
    m = _on_meta(generator, how)
    assert all(p.is_meta for n, p in m.named_parameters() if "vera_lambda" in n)
    m.to_empty(device="cpu")
    m.load_state_dict(_base_state(ref), strict=False)
    vd.init_vectors(m)
    for layer in m.vera_layers():  # spec 3.9
        assert (layer.vera_lambda_d["default"] == 0.1).all() and not layer.vera_lambda_b["default"].any()
    ref_bufs = dict(ref.named_buffers())
    assert dict(m.named_buffers()).keys() == ref_bufs.keys()
    for k, v in m.named_buffers():  # stored: drawn again from the seed, bit for bit
        assert torch.equal(v, ref_bufs[k]), k
    assert bool(ref_bufs) == (generator == "stored")
    path = tmp_path / "trained.safetensors"
    ref.save_adapter(path)
    vd.load_vectors(m, path)  # resume the trained vectors: the projections now reach the output
    assert torch.equal(m(x), ref(x))
    assert {dev for (_, dev) in m._store._cache} <= {"cpu"}  # nothing built on meta is used or kept


def test_stored_projections_from_a_file_come_back_with_load_vectors(tmp_path):
    from vera_torch import VeraModel
    from vera_torch import distributed as vd
    import vera_ref
    ref = _reference("stored")
    path = tmp_path / "stored.safetensors"
    ref.save_adapter(path)
    torch.manual_seed(0)
    given = VeraModel.from_adapter(TinyNet(), path)  # the file's A and B (not drawn from the seed)
    with torch.device("meta"):
        base = TinyNet()
    m = VeraModel.from_adapter(base, path, check_fingerprint=False)  # no weights yet to fingerprint
    m.to_empty(device="cpu")
    m.load_state_dict(_base_state(ref), strict=False)
    with pytest.raises(vera_ref.errors.ModelMismatchError, match="'default': its stored projections were read "
                                                                 "from a file"):
        vd.init_vectors(m)  # the seed cannot give them back
    vd.load_vectors(m, path)
    for k, v in given.named_buffers():
        assert torch.equal(dict(m.named_buffers())[k], v), k
    x = torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(3))
    assert torch.equal(m(x), given(x)) and torch.equal(m(x), ref(x))
