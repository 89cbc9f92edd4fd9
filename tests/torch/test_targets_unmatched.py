"""Issue 21: a target_modules / modules_to_save entry that matches nothing is a ConfigError naming
the entry and the model's linear-layer name endings, never silently ignored; PEFT's forms (a
suffix list, one full-matched regex, "all-linear") keep working."""
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from torch_models import TinyNet  # noqa: E402
from vera_torch import ConfigError, VeraConfig, VeraModel, get_vera_model  # noqa: E402
from vera_torch.model import linear_layers, linear_name_endings, unmatched_targets  # noqa: E402

ENDINGS = "its linear layers' names end in: c_fc, classifier, key, out, query, value"


def _err(**cfg) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        get_vera_model(TinyNet(), VeraConfig(r=4, **cfg))
    return info.value


def test_a_misspelled_entry_is_an_error_naming_it_and_the_endings():
    e = _err(target_modules=["query", "valeu"])
    assert e.field == "target_modules"
    assert str(e) == f"target_modules: 'valeu' matches no nn.Linear or Conv1D layer of this model; {ENDINGS}"


def test_the_issue_case_fc1_fc_2():
    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 4)

        def forward(self, x):
            return self.fc2(self.fc1(x))
    with pytest.raises(ConfigError, match=r"^target_modules: 'fc_2' matches no .* end in: fc1, fc2$"):
        get_vera_model(MLP(), VeraConfig(r=2, target_modules=["fc1", "fc_2"]))


def test_nothing_matches_lists_the_endings_too():
    assert ENDINGS in str(_err(target_modules=["nope", "none"]))
    e = _err(target_modules=r"blocks\.9\..*")
    assert str(e).startswith(r"target_modules: the regular expression 'blocks\\.9\\..*' (full-matched") and ENDINGS in str(e)


def test_a_model_without_linear_layers_says_so():
    with pytest.raises(ConfigError, match="it has no nn.Linear or Conv1D layer"):
        get_vera_model(nn.Sequential(nn.ReLU()), VeraConfig(r=2, target_modules=["0"]))


def test_modules_to_save_entries_must_match_a_module():
    e = _err(target_modules=["query"], modules_to_save=["clasifier"])
    assert e.field == "modules_to_save" and "'clasifier' matches no module of this model" in str(e)
    assert "classifier" in str(e)


def test_allow_unmatched_accepts_a_list_shared_by_architectures():
    m = get_vera_model(TinyNet(), VeraConfig(r=4, target_modules=["query", "c_attn"], allow_unmatched=True))
    assert m.vera_modules["default"] == ["blocks.0.query", "blocks.1.query"]
    with pytest.raises(ConfigError, match="selects no nn.Linear"):  # still: nothing at all is an error
        get_vera_model(TinyNet(), VeraConfig(r=4, target_modules=["c_attn"], allow_unmatched=True))
    with pytest.raises(ConfigError, match="allow_unmatched: must be True or False"):
        VeraConfig(allow_unmatched=1)


def test_regex_and_all_linear_keep_working():
    m = get_vera_model(TinyNet(), VeraConfig(r=4, target_modules=r"blocks\.1\.(key|out)"))
    assert m.vera_modules["default"] == ["blocks.1.key", "blocks.1.out"]
    m = get_vera_model(TinyNet(), VeraConfig(r=4, target_modules="ALL-LINEAR", modules_to_save=["classifier"]))
    assert m.vera_modules["default"] == [f"blocks.{i}.{n}" for i in range(2)
                                         for n in ("query", "key", "value", "c_fc", "out")]
    m = get_vera_model(TinyNet(), VeraConfig(r=4, target_modules="all-linear"))
    assert m.vera_modules["default"][-1] == "classifier"


def test_all_linear_leaves_out_output_embeddings_as_peft():
    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.lm_head = nn.Linear(4, 4), nn.Linear(4, 9)

        def get_output_embeddings(self):
            return self.lm_head

        def forward(self, x):
            return self.lm_head(self.body(x))
    assert get_vera_model(LM(), VeraConfig(r=2, target_modules="all-linear")).vera_modules["default"] == ["body"]


def test_a_second_adapter_matches_already_adapted_layers():
    m = get_vera_model(TinyNet(), VeraConfig(r=4, target_modules=["query"]))
    m.add_adapter("b", VeraConfig(r=4, target_modules=["query", "key"], seed=1))
    assert m.vera_modules["b"] == ["blocks.0.query", "blocks.0.key", "blocks.1.query", "blocks.1.key"]
    with pytest.raises(ConfigError, match="'kee' matches no"):
        m.add_adapter("c", VeraConfig(r=4, target_modules=["kee"]))
    assert set(m.adapters) == {"default", "b"}
    assert linear_layers(m) == linear_layers(TinyNet())  # adapted layers count by their wrapper's path


def test_public_helpers():
    net = TinyNet()
    assert linear_name_endings(net) == ["c_fc", "classifier", "key", "out", "query", "value"]
    assert unmatched_targets(net, ["query", "x", "blocks.0.key", "locks.0.key"]) == ["x", "locks.0.key"]
    assert unmatched_targets(net, r"blocks\.0\.key") == [] and unmatched_targets(net, "key") == ["key"]
    assert unmatched_targets(VeraModel(net), "all-linear") == []


def test_loading_a_file_is_unaffected(tmp_path):
    m = get_vera_model(TinyNet(), VeraConfig(r=4, target_modules=["query"]))
    m.save_adapter(tmp_path / "a.safetensors")
    fresh = VeraModel.from_adapter(TinyNet(), tmp_path / "a.safetensors", check_fingerprint=False)
    assert fresh.vera_modules["default"] == ["blocks.0.query", "blocks.1.query"]
