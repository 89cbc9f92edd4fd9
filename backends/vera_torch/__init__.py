"""vera_torch: VeRA for PyTorch, bit-identical to the spec's projections (DESIGN 4).

    from vera_torch import VeraConfig, get_vera_model
    model = get_vera_model(base, VeraConfig(r=256, target_modules=["query", "value"], seed=0))
"""
from .config import VeraConfig
from .functional import project_in, vera_delta
from .layer import ModulesToSave, VeraLayer, is_conv1d
from .model import VeraModel, get_vera_model
from .philox import projection
from .views import AdapterView, HeadView, LayerView

__all__ = ["VeraConfig", "VeraModel", "get_vera_model", "VeraLayer", "ModulesToSave", "projection",
           "project_in", "vera_delta", "is_conv1d", "AdapterView", "LayerView", "HeadView"]
