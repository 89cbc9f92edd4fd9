"""The race tests of issue 23 for every path that loads a file (vera_onnx's own is in
tests/onnx/test_onnx_hostile.py): a thread replaces the file(s) atomically (os.replace) between a good
and a bad version while the main thread loads them again and again. Every load must give exactly the
good adapter's values or the documented error (never a mix of two versions, never a NaN), and both
outcomes must have occurred, or the race did not run and the test fails.

At scale: ``python tests/hostile/test_load_races.py --loads 20000``."""
import contextlib
import io
import json
import os
import threading
import time

import numpy as np
import pytest

import vera_ref
from vera_ref import ModuleSpec, container, new_adapter
from vera_ref.errors import AdapterFileError, ConversionError
from vera_ref.peft_interop import peft_to_adapter

SEED, R = 4, 3
MODS = [ModuleSpec("0", 6, 3), ModuleSpec("2", 3, 5)]
X = np.linspace(-2, 2, 18, dtype=np.float32).reshape(3, 6)
LOADS = 400          # per path; each path stops earlier at SECONDS
SECONDS = 4.0


def _adapter(mods=MODS, r=R, values=1):
    ad = new_adapter(mods, r, seed=SEED)
    rng = np.random.default_rng(values)
    for m in ad.config.modules:
        ad.lambda_d[m.name][:] = rng.uniform(-1, 1, r)
        ad.lambda_b[m.name][:] = rng.uniform(-1, 1, m.out_features)
    return ad


def _nan_copy(data: bytes, vec: np.ndarray) -> bytes:
    """``data`` with the bytes of ``vec`` (float32, found exactly once) replaced by NaN: same length,
    same header, only the values change."""
    old = np.ascontiguousarray(vec, np.float32).tobytes()
    assert data.count(old) == 1, "the vector's bytes must be found once"
    return data.replace(old, np.full(vec.shape, np.nan, np.float32).tobytes())


def spec_files(d, mods=MODS):
    """(good bytes, NaN bytes, the good Adapter) of a spec 4 adapter file."""
    good = _adapter(mods)
    vera_ref.save_adapter(good, d / "good.safetensors")
    data = (d / "good.safetensors").read_bytes()
    last = mods[-1].name
    return data, _nan_copy(data, good.lambda_b[last]), vera_ref.load_adapter(d / "good.safetensors")


def race(d, slots: dict[str, tuple[bytes, bytes]], load, same_as_good, errors, loads=LOADS, seconds=SECONDS):
    """Load ``loads`` times (or for ``seconds``, once both outcomes occurred) while a thread replaces each file of ``slots``
    (name -> (good bytes, bad bytes)) with one of its versions, by os.replace of a hard link, one file
    at a time in a random order. ``load()`` returns the result, ``same_as_good(result)`` says whether it
    is exactly the good one; ``errors`` the documented refusal types. Returns the outcome counts."""
    staged = {}
    for name, versions in slots.items():
        for i, data in enumerate(versions):
            (d / f"{name}.v{i}").write_bytes(data)
        staged[name] = [d / f"{name}.v{i}" for i in range(2)]
        if (d / name).exists():
            (d / name).unlink()
        os.link(staged[name][0], d / name)
    stop = threading.Event()
    names = sorted(slots)

    def swapper():
        rng = np.random.default_rng(0)
        while not stop.is_set():
            name = names[rng.integers(len(names))]
            tmp = d / f"{name}.tmp"
            if tmp.exists():
                tmp.unlink()
            os.link(staged[name][rng.integers(2)], tmp)
            os.replace(tmp, d / name)
    counts = {"good": 0, "refused": 0, "wrong": 0}
    t = threading.Thread(target=swapper, daemon=True)
    t.start()
    t0 = time.perf_counter()
    try:
        for _ in range(loads):
            try:
                result = load()
            except errors:
                counts["refused"] += 1
            else:
                counts["good" if same_as_good(result) else "wrong"] += 1
            if time.perf_counter() - t0 > seconds and counts["good"] and counts["refused"]:
                break  # on a slow machine: past the time once both outcomes were seen, else up to ``loads``
    finally:
        stop.set()
        t.join()
    return counts


def _check(counts, what):
    print(f"{what}: {counts}")
    assert counts["wrong"] == 0, f"{what}: a load gave neither the good adapter nor a refusal: {counts}"
    assert counts["good"] > 0 and counts["refused"] > 0, (
        f"{what}: the race did not alternate the outcomes ({counts}); it exercised nothing")


def _same_adapter(ad, good) -> bool:
    return (ad.config.r == good.config.r and [m.name for m in ad.config.modules] == [m.name for m in good.config.modules]
            and all(np.array_equal(ad.lambda_d[n], good.lambda_d[n]) and np.array_equal(ad.lambda_b[n], good.lambda_b[n])
                    for n in good.lambda_d))


# -- vera_ref.load_adapter and `vera-ref validate` ------------------------------------------------------------
def test_load_adapter_race(tmp_path):
    good_b, nan_b, good = spec_files(tmp_path)
    counts = race(tmp_path, {"a.safetensors": (good_b, nan_b)}, lambda: vera_ref.load_adapter(tmp_path / "a.safetensors"),
                  lambda ad: _same_adapter(ad, good), AdapterFileError)
    _check(counts, "vera_ref.load_adapter")


def test_cli_validate_race(tmp_path):
    from vera_ref.cli import main
    good_b, nan_b, _ = spec_files(tmp_path)
    path = str(tmp_path / "a.safetensors")

    class Refused(Exception):
        pass

    def load():
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(["validate", path])
        if rc == 0:
            return out.getvalue() + err.getvalue()
        text = err.getvalue() + out.getvalue()
        assert rc != 0 and "Traceback" not in text and text.strip(), (rc, text)
        raise Refused(text)
    counts = race(tmp_path, {"a.safetensors": (good_b, nan_b)}, load, lambda text: "Traceback" not in text, Refused,
                  loads=300)
    _check(counts, "vera-ref validate")


# -- vera_ref.peft_interop.peft_to_adapter: two files, each replaced on its own ------------------------------
PEFT_CFG = {"peft_type": "VERA", "r": R, "target_modules": ["q"], "projection_prng_key": 0,
            "save_projection": False, "bias": "none"}


def _peft_bytes(tmp_path, r, values, nan=False) -> bytes:
    p = tmp_path / f"w-{r}-{values}-{nan}.safetensors"
    tensors = {}
    rng = np.random.default_rng(values)
    for n, out in (("enc.q", 4), ("dec.q", 5)):
        d = rng.uniform(-1, 1, r).astype(np.float32)
        b = rng.uniform(-1, 1, out).astype(np.float32)
        if nan and n == "dec.q":
            b[:] = np.nan
        tensors[f"base_model.model.{n}.vera_lambda_d"] = (d, "F32")
        tensors[f"base_model.model.{n}.vera_lambda_b"] = (b, "F32")
    container.write(p, {"format": "pt"}, tensors)
    return p.read_bytes()


@pytest.mark.parametrize("bad", ["nan", "other-r"])
def test_peft_to_adapter_race(tmp_path, bad):
    d = tmp_path / "peft"
    d.mkdir()
    dims = {"enc.q": (6, 4), "dec.q": (6, 5)}
    cfg_good = json.dumps(PEFT_CFG).encode()
    w_good = _peft_bytes(tmp_path, R, 1)
    if bad == "nan":  # the bad config names another r, the bad weights hold a NaN vector
        cfg_bad, w_bad = json.dumps({**PEFT_CFG, "r": R + 2}).encode(), _peft_bytes(tmp_path, R, 1, nan=True)
    else:  # both bad files agree with each other (r+2) but with neither good one
        cfg_bad, w_bad = json.dumps({**PEFT_CFG, "r": R + 2}).encode(), _peft_bytes(tmp_path, R + 2, 2)
    (d / "adapter_config.json").write_bytes(cfg_good)
    (d / "adapter_model.safetensors").write_bytes(w_good)
    good = peft_to_adapter(d, dims=dims)
    other = None
    if bad == "other-r":
        (d / "adapter_config.json").write_bytes(cfg_bad)
        (d / "adapter_model.safetensors").write_bytes(w_bad)
        other = peft_to_adapter(d, dims=dims)  # a wholly bad folder is a valid adapter too: wholly one or the other
    seen = {"good": 0, "other": 0}

    def same(ad):
        for k, ref in (("good", good), ("other", other)):
            if ref is not None and _same_adapter(ad, ref):
                seen[k] += 1
                return all(np.isfinite(v).all() for v in (*ad.lambda_d.values(), *ad.lambda_b.values()))
        return False
    counts = race(d, {"adapter_config.json": (cfg_good, cfg_bad), "adapter_model.safetensors": (w_good, w_bad)},
                  lambda: peft_to_adapter(d, dims=dims), same, ConversionError)
    _check(counts, f"peft_to_adapter ({bad})")
    if bad == "other-r":
        assert seen["other"] > 0, f"the wholly-bad folder was never read whole: {seen} {counts}"


# -- vera_jax: read_adapter and nnx.load_adapter ---------------------------------------------------------------
def test_jax_read_adapter_race(tmp_path):
    pytest.importorskip("jax")
    import vera_jax
    good_b, nan_b, good = spec_files(tmp_path)
    counts = race(tmp_path, {"a.safetensors": (good_b, nan_b)}, lambda: vera_jax.read_adapter(tmp_path / "a.safetensors"),
                  lambda ad: _same_adapter(ad, good), AdapterFileError, loads=300)
    _check(counts, "vera_jax.read_adapter")


def test_jax_nnx_load_adapter_race(tmp_path):
    pytest.importorskip("jax")
    nnx = pytest.importorskip("flax.nnx")
    from vera_jax.nnx import load_adapter, vera_layers
    mods = [ModuleSpec("fc1", 6, 3), ModuleSpec("fc2", 3, 5)]
    good_b, nan_b, good = spec_files(tmp_path, mods)

    class MLP(nnx.Module):
        def __init__(self):
            self.fc1, self.fc2 = nnx.Linear(6, 3, rngs=nnx.Rngs(0)), nnx.Linear(3, 5, rngs=nnx.Rngs(1))
    model = MLP()

    def load():
        load_adapter(model, tmp_path / "a.safetensors")
        return {n: (np.asarray(layer.lambda_d[...]), np.asarray(layer.lambda_b[...])) for n, layer in vera_layers(model)}

    def same(vals):
        return sorted(vals) == ["fc1", "fc2"] and all(
            np.array_equal(vals[n][0], good.lambda_d[n]) and np.array_equal(vals[n][1], good.lambda_b[n]) for n in vals)
    counts = race(tmp_path, {"a.safetensors": (good_b, nan_b)}, load, same, AdapterFileError, loads=300)
    _check(counts, "vera_jax.nnx.load_adapter")


# -- vera_torch: VeraModel.load_adapter and from_adapter -------------------------------------------------------
def _torch_base():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 3), torch.nn.ReLU(), torch.nn.Linear(3, 5)).eval()


@pytest.mark.parametrize("entry", ["load_adapter", "from_adapter"])
def test_torch_load_race(tmp_path, entry):
    torch = pytest.importorskip("torch")
    from vera_ref.errors import ModelMismatchError
    from vera_torch import VeraModel
    good_b, nan_b, good = spec_files(tmp_path)
    path = tmp_path / "a.safetensors"
    x = torch.from_numpy(X)
    (tmp_path / "ref.safetensors").write_bytes(good_b)
    with torch.no_grad():
        expected = VeraModel.from_adapter(_torch_base(), tmp_path / "ref.safetensors")(x).numpy()
    vm = VeraModel(_torch_base())

    def load():
        if entry == "from_adapter":
            m = VeraModel.from_adapter(_torch_base(), path)
        else:
            if "a" in vm.adapters:
                vm.delete_adapter("a")
            vm.load_adapter(path, "a")
            m = vm
        with torch.no_grad():
            return m(x).numpy()
    counts = race(tmp_path, {"a.safetensors": (good_b, nan_b)}, load, lambda y: np.array_equal(y, expected),
                  (AdapterFileError, ModelMismatchError), loads=300)
    _check(counts, f"VeraModel.{entry}")


if __name__ == "__main__":  # at scale: python tests/hostile/test_load_races.py --loads 20000
    import argparse
    import tempfile
    from pathlib import Path
    ap = argparse.ArgumentParser()
    ap.add_argument("--loads", type=int, default=20000)
    a = ap.parse_args()
    LOADS, SECONDS = a.loads, float("inf")
    with tempfile.TemporaryDirectory() as t:
        good_b, nan_b, good = spec_files(Path(t))
        t0 = time.perf_counter()
        c = race(Path(t), {"a.safetensors": (good_b, nan_b)}, lambda: vera_ref.load_adapter(Path(t) / "a.safetensors"),
                 lambda ad: _same_adapter(ad, good), AdapterFileError, loads=LOADS, seconds=SECONDS)
        print(f"vera_ref.load_adapter: {LOADS} loads in {time.perf_counter() - t0:.1f} s: {c}")
