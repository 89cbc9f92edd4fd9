"""Issue 21: spec file -> PEFT folder -> spec file gives the same bytes. The spec document travels in
the PEFT file's safetensors metadata; on the way back it is used only after the projections its
generator and seed give are checked, bit for bit, against the ones PEFT uses (README "PEFT
compatibility"). Real PEFT still loads the folder."""
import copy
import json
import subprocess
import sys

import numpy as np
import pytest

from vera_ref import container
from vera_ref.adapter import load_adapter, new_adapter, save_adapter
from vera_ref.errors import ConversionError
from vera_ref.peft_interop import CARRIED_CONFIG, WEIGHTS_FILE, adapter_to_peft, peft_to_adapter

MODULES = [("enc.0.q", 16, 16), ("enc.0.v", 16, 24), ("enc.1.q", 16, 16), ("enc.1.v", 16, 24)]
FINGERPRINT = {"name": "tiny", "fingerprint": "0123456789abcdef" * 4}


def _spec_file(path, generator, layout, fingerprint, *, head=False, seed=7, dtype="float32"):
    ad = new_adapter(MODULES, 8, seed=seed, generator=generator, tensor_layout=layout, vector_dtype=dtype,
                     base_model=dict(FINGERPRINT) if fingerprint else None, provenance={"made_by": "test"})
    rng = np.random.default_rng(1)
    for n in ad.lambda_b:
        ad.lambda_d[n] = rng.standard_normal(8).astype(ad.lambda_d[n].dtype)
        ad.lambda_b[n] = rng.standard_normal(ad.lambda_b[n].shape).astype(ad.lambda_b[n].dtype)
    if head:
        ad.extra["head.weight"] = (rng.standard_normal((3, 24)).astype(np.float32), "float32")
        ad.extra["head.bias"] = (rng.standard_normal(3).astype(np.float32), "float32")
    save_adapter(ad, path)
    return path


def _round_trip(tmp_path, src):
    adapter_to_peft(load_adapter(src), tmp_path / "peft")
    save_adapter(peft_to_adapter(tmp_path / "peft"), tmp_path / "back.safetensors")
    return (tmp_path / "back.safetensors").read_bytes()


@pytest.mark.parametrize("generator", ["philox4x32-10", "peft-mt19937"])
@pytest.mark.parametrize("layout", ["per-module", "packed"])
@pytest.mark.parametrize("fingerprint", [False, True])
def test_spec_peft_spec_gives_the_same_bytes(tmp_path, generator, layout, fingerprint):
    src = _spec_file(tmp_path / "a.safetensors", generator, layout, fingerprint, head=fingerprint)
    assert _round_trip(tmp_path, src) == src.read_bytes()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_same_bytes_in_other_vector_dtypes(tmp_path, dtype):
    src = _spec_file(tmp_path / "a.safetensors", "philox4x32-10", "packed", True, dtype=dtype)
    assert _round_trip(tmp_path, src) == src.read_bytes()


def test_the_cli_round_trip_of_the_issue(tmp_path):
    """A Philox file with a base fingerprint came back 12x larger, generator stored, fingerprint gone."""
    src = _spec_file(tmp_path / "a.safetensors", "philox4x32-10", "per-module", True)
    cli = [sys.executable, "-m", "vera_ref.cli", "convert"]
    subprocess.run(cli + ["--to-peft", str(src), "--out", str(tmp_path / "peft")], check=True, capture_output=True)
    subprocess.run(cli + ["--from-peft", str(tmp_path / "peft"), "--out", str(tmp_path / "b.safetensors")],
                   check=True, capture_output=True)
    assert (tmp_path / "b.safetensors").read_bytes() == src.read_bytes()


def _tamper(tmp_path, edit):
    meta, tensors = container.read(tmp_path / "peft" / WEIGHTS_FILE)
    plan = {k: (np.array(t.data), t.dtype) for k, t in tensors.items()}
    meta = dict(meta)
    edit(meta, plan)
    container.write(tmp_path / "peft" / WEIGHTS_FILE, meta, plan)


def test_edited_projections_are_kept_stored_not_replaced_by_the_carried_generator(tmp_path):
    src = _spec_file(tmp_path / "a.safetensors", "philox4x32-10", "per-module", True)
    adapter_to_peft(load_adapter(src), tmp_path / "peft")

    def edit(meta, plan):
        plan["base_model.vera_A"][0][0, 0] += 1.0
    _tamper(tmp_path, edit)
    back = peft_to_adapter(tmp_path / "peft")
    assert back.config.generator == "stored" and back.stored[0][0][0, 0] == load_adapter(src).projection(0)[0][0, 0] + 1
    assert "does not give the projections PEFT uses" in back.config.provenance["carried_vera_config_ignored"]


def test_an_edited_carried_seed_is_caught(tmp_path):
    src = _spec_file(tmp_path / "a.safetensors", "peft-mt19937", "per-module", False)
    adapter_to_peft(load_adapter(src), tmp_path / "peft")

    def edit(meta, plan):
        doc = json.loads(meta[CARRIED_CONFIG])
        doc["seed"] = "8"
        meta[CARRIED_CONFIG] = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    _tamper(tmp_path, edit)
    back = peft_to_adapter(tmp_path / "peft")  # PEFT regenerates from projection_prng_key 7: that wins
    assert back.config.generator == "peft-mt19937" and back.config.seed == 7
    assert "seed 8 does not give" in back.config.provenance["carried_vera_config_ignored"]


def test_changed_peft_fields_ignore_the_carried_document(tmp_path):
    src = _spec_file(tmp_path / "a.safetensors", "philox4x32-10", "per-module", False)
    adapter_to_peft(load_adapter(src), tmp_path / "peft")
    cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    (tmp_path / "peft" / "adapter_config.json").write_text(json.dumps({**cfg, "d_initial": 0.5}))
    back = peft_to_adapter(tmp_path / "peft")
    assert back.config.d_initial == 0.5 and back.config.generator == "stored"
    assert "d_initial" in back.config.provenance["carried_vera_config_ignored"]


def test_keep_projections_keeps_them(tmp_path):
    src = _spec_file(tmp_path / "a.safetensors", "philox4x32-10", "per-module", False)
    adapter_to_peft(load_adapter(src), tmp_path / "peft")
    assert peft_to_adapter(tmp_path / "peft", keep_projections=True).config.generator == "stored"


@pytest.mark.parametrize("text", ["{", "[]", '{"r": 1}', "1" * 5000, '{"r":' * 100 + "1" + "}" * 100])
def test_a_hostile_carried_document_is_a_conversion_error(tmp_path, text):
    src = _spec_file(tmp_path / "a.safetensors", "philox4x32-10", "per-module", False)
    adapter_to_peft(load_adapter(src), tmp_path / "peft")

    def edit(meta, plan):
        meta[CARRIED_CONFIG] = text
    _tamper(tmp_path, edit)
    with pytest.raises(ConversionError, match=f"metadata {CARRIED_CONFIG}: "):
        peft_to_adapter(tmp_path / "peft")


def test_real_peft_loads_the_exported_folder(tmp_path):
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from torch import nn

    from vera_torch import VeraModel

    class Enc(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.ModuleList(nn.ModuleDict({"q": nn.Linear(16, 16), "v": nn.Linear(16, 24)}) for _ in range(2))
            self.head = nn.Linear(24, 3)

        def forward(self, x):
            for blk in self.enc:
                x = blk["q"](x)
                y = blk["v"](x)
            return self.head(y)

    torch.manual_seed(0)
    base = Enc()
    x = torch.randn(5, 16)
    for generator in ("philox4x32-10", "peft-mt19937"):
        src = _spec_file(tmp_path / f"{generator}.safetensors", generator, "packed", False, head=True)
        ours = VeraModel.from_adapter(copy.deepcopy(base), src).eval()
        out = tmp_path / f"peft-{generator}"
        adapter_to_peft(load_adapter(src), out)
        pm = peft.PeftModel.from_pretrained(copy.deepcopy(base), out).eval()
        with torch.no_grad():  # float64 copies: linear layers only, sums of <= 24 terms, ~60 ops of 2^-53 on
            # a value's way: under 1e-13 of the output scale on any machine; another projection is O(1) off
            got, want = copy.deepcopy(pm).double()(x.double()), copy.deepcopy(ours).double()(x.double())
            assert got.dtype == torch.float64 and (got - want).abs().max() <= 1e-9 * max(1.0, want.abs().max())
        back = tmp_path / f"back-{generator}.safetensors"
        save_adapter(peft_to_adapter(out), back)
        assert back.read_bytes() == src.read_bytes()


def test_module_order_and_mixed_widths_survive(tmp_path):
    ad = new_adapter([("z.q", 16, 16), ("a.v", 8, 24), ("enc.10.q", 16, 16), ("enc.2.q", 16, 16)], 4, seed=3)
    save_adapter(ad, tmp_path / "a.safetensors")
    assert _round_trip(tmp_path, tmp_path / "a.safetensors") == (tmp_path / "a.safetensors").read_bytes()
