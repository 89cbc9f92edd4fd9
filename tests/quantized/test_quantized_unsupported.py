"""Quantized layers VeRA does not support get one clear error naming the layer type and what is
supported (spec 7.1), never a shape RuntimeError; recognised without importing their packages."""
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from vera_torch import VeraConfig, get_vera_model  # noqa: E402
from vera_torch.model import VeraModel  # noqa: E402
from vera_torch import quantized as Q  # noqa: E402


def fake(cls_name: str, module: str, base=nn.Module):
    """A class named and placed like another package's quantized layer."""
    def init(self, i=64, o=32):
        base.__init__(self)
        self.in_features, self.out_features = i, o
        self.register_buffer("qweight", torch.zeros(i // 8, o, dtype=torch.int32))

    return type(cls_name, (base,), {"__init__": init, "__module__": module, "forward": lambda self, x: x[..., :32]})


@pytest.mark.parametrize("cls_name,module,family", [
    ("QuantLinear", "auto_gptq.nn_modules.qlinear.qlinear_cuda", "GPTQ"),
    ("QuantLinear", "gptqmodel.nn_modules.qlinear.torch", "GPTQ"),
    ("WQLinear_GEMM", "awq.modules.linear.gemm", "AWQ"),
    ("HQQLinear", "hqq.core.quantize", "HQQ"),
])
def test_a_foreign_quantized_layer_is_refused_naming_its_type(cls_name, module, family):
    model = nn.Sequential(fake(cls_name, module)(), nn.Linear(32, 4))
    with pytest.raises(Q.QuantizedLayerError) as e:
        get_vera_model(model, VeraConfig(r=4, target_modules=["0"], seed=0))
    msg = str(e.value)
    assert msg.startswith(f"0: VeRA cannot adapt a {family} quantized layer ({module}.{cls_name})")
    assert "supported: bitsandbytes Linear4bit" in msg and "\n" not in msg
    assert isinstance(model[0], nn.Module) and type(model[0]).__name__ == cls_name  # the model is unchanged


def test_all_linear_on_a_gptq_model_is_refused_too_and_a_load_as_well(tmp_path):
    model = nn.Sequential(fake("QuantLinear", "auto_gptq.nn_modules.qlinear")(), nn.Linear(32, 4))
    with pytest.raises(Q.QuantizedLayerError, match="GPTQ"):
        get_vera_model(model, VeraConfig(r=4, target_modules="all-linear", seed=0))
    ok = get_vera_model(nn.Sequential(nn.Linear(64, 32), nn.Linear(32, 4)),
                        VeraConfig(r=4, target_modules=["0"], seed=0))
    f = tmp_path / "a.safetensors"
    ok.save_adapter(f)
    with pytest.raises(Q.QuantizedLayerError, match="^0: VeRA cannot adapt a GPTQ"):
        VeraModel.from_adapter(model, f)


def test_a_torchao_tensor_subclass_weight_is_refused():
    class AffineQuantizedTensor(torch.Tensor):
        pass

    AffineQuantizedTensor.__module__ = "torchao.dtypes.affine_quantized_tensor"
    lin = nn.Linear(64, 32)
    lin.weight = nn.Parameter(torch.Tensor._make_subclass(AffineQuantizedTensor, lin.weight.detach()), False)
    assert type(lin.weight).__module__.startswith("torchao")
    with pytest.raises(Q.QuantizedLayerError, match="tensor subclass .torchao / quanto quantization."):
        get_vera_model(nn.Sequential(lin), VeraConfig(r=4, target_modules=["0"], seed=0))


def test_an_unknown_integer_weight_linear_is_refused():
    lin = nn.Linear(64, 32)
    lin.weight = nn.Parameter(torch.zeros(32, 64, dtype=torch.int8), requires_grad=False)
    with pytest.raises(Q.QuantizedLayerError, match="int8 weight .an unknown quantized layer."):
        get_vera_model(nn.Sequential(lin), VeraConfig(r=4, target_modules=["0"], seed=0))


def test_a_plain_model_whose_package_name_looks_quantized_is_not_caught():
    Block = type("Block", (nn.Module,), {"__module__": "myproj.awq_experiments"})  # no "linear" in the name
    assert Q.foreign(Block()) is None
