"""vera_torch: VeRA for PyTorch, bit-identical to the spec's projections (spec 1-3; README "PyTorch").

    from vera_torch import VeraConfig, get_vera_model
    model = get_vera_model(base, VeraConfig(r=256, target_modules=["query", "value"], seed=0))

Importing vera_torch registers its torch projections for ``philox4x32-10`` and
``peft-mt19937`` in ``vera_ref.generators`` (``generators.get(name).device("torch")``).
"""
from .config import VeraConfig
from .errors import AdapterNameError, BatchError, ConfigError, MergeError
from .functional import project_in, vera_delta
from .heads import ModulesToSave
from .layer import VeraLayer, is_conv1d, peft_projection
from .model import VeraModel, get_vera_model, linear_layers, linear_name_endings, unmatched_targets
from .philox import projection
from .quantized import QuantizedBaseWarning, QuantizedLayerError, RequantizationError
from .views import AdapterView, HeadView, LayerView

__all__ = ["VeraConfig", "VeraModel", "get_vera_model", "linear_layers", "linear_name_endings", "unmatched_targets", "VeraLayer", "ModulesToSave", "projection",
           "peft_projection", "project_in", "vera_delta", "is_conv1d", "AdapterView", "LayerView", "HeadView",
           "ConfigError", "AdapterNameError", "MergeError", "BatchError", "QuantizedLayerError",
           "RequantizationError", "QuantizedBaseWarning"]
