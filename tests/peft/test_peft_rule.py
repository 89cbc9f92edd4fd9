"""vera_ref.peft_interop.peft_selects against PEFT's own check_target_module_exists, name by name."""
import itertools
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

peft = pytest.importorskip("peft")
from peft.tuners.tuners_utils import check_target_module_exists  # noqa: E402

from vera_ref.errors import ConversionError  # noqa: E402
from vera_ref.peft_interop import check_selection, exact_target_modules, peft_selects  # noqa: E402

# module paths of the shapes real models have (BERT, GPT-2, Llama, T5, Whisper), plus look-alikes
NAMES = [
    "bert", "bert.encoder", "bert.encoder.layer", "bert.encoder.layer.0", "bert.encoder.layer.0.attention",
    "bert.encoder.layer.0.attention.self", "bert.encoder.layer.0.attention.self.query",
    "bert.encoder.layer.0.attention.self.value", "bert.encoder.layer.0.attention.output.dense",
    "bert.encoder.layer.0.intermediate.dense", "bert.encoder.layer.0.output.dense",
    "bert.encoder.layer.11.intermediate.dense", "bert.encoder.layer.1.attention.self.query",
    "bert.pooler.dense", "classifier", "classifier.dense", "classifier.out_proj", "query", "dense",
    "intermediate.dense", "xintermediate.dense", "bert.encoder.layer.0.xquery", "bert.encoder.layer.0.query_proj",
    "transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj", "transformer.h.0.mlp.c_proj",
    "transformer.h.1.mlp.c_fc", "lm_head", "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj",
    "model.layers.1.self_attn.v_proj", "model.layers.1.mlp.gate_proj", "model.layers.0.experts.3.up_proj",
    "model.layers.2.experts.0.w1", "model.layers.1.mlp.up_proj", "model.layers.1.experts.2.w1", "encoder.block.0.layer.0.SelfAttention.q", "decoder.block.1.layer.1.EncDecAttention.v",
    "decoder.block.1.layer.2.DenseReluDense.wi", "model.encoder.layers.0.self_attn.q_proj",
    "model.decoder.layers.1.encoder_attn.k_proj", "a.b+c.query", "a.b(c).query", "layers.0.q", "q",
]

CONFIGS = [
    dict(target_modules=["query", "value"]),
    dict(target_modules=["intermediate.dense"]),
    dict(target_modules=["dense", "query"], modules_to_save=["classifier"]),
    dict(target_modules=["q_proj", "v_proj", "c_attn"], layers_to_transform=[0]),
    dict(target_modules=["q_proj", "up_proj", "w1"], layers_to_transform=1),
    dict(target_modules=["q_proj", "k_proj", "query"], layers_to_transform=[0, 1], layers_pattern="layers"),
    dict(target_modules=["q", "v", "wi"], layers_to_transform=[0, 1], layers_pattern=["block", "h"]),
    dict(target_modules=["query"], layers_to_transform=[]),
    dict(target_modules=r".*\.(query|value)"),
    dict(target_modules=r"bert\.encoder\.layer\.0\..*"),
    dict(target_modules=r"query|dense", modules_to_save=["pooler"]),
    dict(target_modules=r".*(q|v)_proj", modules_to_save=["layers.1"]),
    dict(target_modules=exact_target_modules(["bert.encoder.layer.0.attention.self.query",
                                              "bert.encoder.layer.0.intermediate.dense", "a.b+c.query",
                                              "a.b(c).query"])),
    dict(target_modules=["classifier.dense", "lm_head", "q"], modules_to_save=["out_proj"]),
]


class _Cfg:
    """The attributes check_target_module_exists reads from a PEFT config."""

    def __init__(self, doc):
        self.target_modules = doc.get("target_modules")
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)  # as VeraConfig.__post_init__ does
        self.modules_to_save = doc.get("modules_to_save")
        self.layers_to_transform = doc.get("layers_to_transform")
        self.layers_pattern = doc.get("layers_pattern")
        self.target_parameters = None


@pytest.mark.parametrize("doc", CONFIGS, ids=lambda d: str(d["target_modules"])[:40])
def test_rule_agrees_with_peft_on_every_name(doc):
    got = [peft_selects(doc, n) for n in NAMES]
    want = [bool(check_target_module_exists(_Cfg(doc), n)) for n in NAMES]
    assert got == want, [n for n, g, w in zip(NAMES, got, want) if g != w]
    assert any(got)  # each config selects something, so the comparison is not vacuous


def test_rule_agrees_with_a_real_vera_config():
    cfg = peft.VeraConfig(r=4, target_modules=["query", "intermediate.dense"], layers_to_transform=[0],
                          layers_pattern="layer", modules_to_save=["classifier"])
    doc = cfg.to_dict()
    doc["target_modules"] = sorted(doc["target_modules"])  # as save_pretrained writes the set
    for n in NAMES:
        assert peft_selects(doc, n) == bool(check_target_module_exists(cfg, n)), n


def test_exact_target_modules_selects_only_its_names():
    wanted = ["bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.intermediate.dense", "a.b+c.query"]
    doc = {"target_modules": exact_target_modules(wanted)}
    assert [n for n in NAMES if peft_selects(doc, n)] == sorted(wanted, key=NAMES.index)
    for a, b in itertools.product(wanted, NAMES):  # no prefix or suffix of a wanted name is selected
        if b != a and (a.endswith(b) or a.startswith(b) or b.endswith(a)):
            assert not peft_selects(doc, b), b


def test_check_selection_refuses_over_and_under_matching():
    wanted = ["bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.intermediate.dense"]
    with pytest.raises(ConversionError, match=r"target_modules \['dense', 'query'\]: PEFT would also adapt "
                                              r"'bert.encoder.layer.0.attention.output.dense', which the adapter does not"):
        check_selection({"target_modules": ["dense", "query"]}, wanted, [n for n in NAMES if n.startswith("bert")])
    with pytest.raises(ConversionError, match=r"PEFT would not adapt 'bert.encoder.layer.0.intermediate.dense'"):
        check_selection({"target_modules": ["query"]}, wanted, NAMES)
    with pytest.raises(ConversionError, match="PEFT would not adapt 'classifier.dense'"):
        check_selection({"target_modules": exact_target_modules(["classifier.dense"]),
                         "modules_to_save": ["classifier"]}, ["classifier.dense"], NAMES)
    check_selection({"target_modules": exact_target_modules(wanted)}, wanted, NAMES)  # exact: accepted


def test_rule_refuses_what_it_cannot_resolve():
    with pytest.raises(ConversionError, match="target_modules is 'all-linear': PEFT resolves it against the model"):
        peft_selects({"target_modules": "all-linear"}, "a.query")
    with pytest.raises(ConversionError, match="target_modules is missing: PEFT would choose modules by model type"):
        peft_selects({"target_modules": None}, "a.query")


_PART = st.sampled_from(["q", "k", "query", "dense", "layer", "layers", "0", "1", "11", "self", "attn", "x.y"])
_NAME = st.lists(_PART, min_size=1, max_size=6).map(".".join)


@given(names=st.lists(_NAME, min_size=1, max_size=12), targets=st.lists(_NAME, min_size=1, max_size=3),
       regex=st.booleans(), layers=st.sampled_from([None, 0, [1], [0, 11]]),
       pattern=st.sampled_from([None, "layer", ["layers", "self"]]), saves=st.sampled_from([None, ["attn"], ["k"]]))
def test_rule_agrees_with_peft_on_random_names(names, targets, regex, layers, pattern, saves):
    doc = {"target_modules": "|".join(re.escape(t) for t in targets) if regex else targets,
           "layers_to_transform": layers, "layers_pattern": pattern if layers is not None else None,
           "modules_to_save": saves}
    for n in names:
        assert peft_selects(doc, n) == bool(check_target_module_exists(_Cfg(doc), n)), (doc, n)
