"""Deliberately wrong implementations for checks_own.py: each must fail the
check named in ``CAUGHT_BY`` (tests/conformance/test_conformance.py asserts it).

Each is an own generator (a framework's sampler, ``generator = "own"``) with one bug seen in
real code: a seed that never reaches the sampler (AdapterHub's ``init_weights_seed`` is ignored
and A, B come from torch's global RNG), a fixed seed, a generator kept between calls, and save/load
paths that re-draw A and B on load, save the vectors in half precision, or load nothing.
``OwnWithReload`` is the conforming one: its save/load passes ``own_reload``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import vera_ref
from vera_ref.projection import kaiming_bound

from ..protocol import LayerCase
from .reference import Reference


def _uniform(rng, r, n_in, n_out):
    """A (r, n_in) and B (n_out, r), float32, uniform within the Kaiming bounds of spec 1.6."""
    bA, bB = float(kaiming_bound(n_in)), float(kaiming_bound(r))
    return (rng.uniform(-bA, bA, (r, n_in)).astype(np.float32), rng.uniform(-bB, bB, (n_out, r)).astype(np.float32))


class OwnGeneratorUniform(Reference):
    """As broken.OwnGeneratorUniform (not imported: broken.py imports this module): NumPy's
    sampler seeded from the seed; the layer checks use the case's A and B."""
    name = "own generator, uniform (NumPy)"
    generator = "own"

    def projection(self, seed, r, n_in, n_out, group, device):
        return _uniform(np.random.default_rng(seed), r, n_in, n_out)

    def _proj(self, c: LayerCase):
        return c.A, c.B


class OwnSeedIgnoredTorch(OwnGeneratorUniform):
    """AdapterHub's pattern: the seed is accepted and ignored; A and B are drawn from torch's
    global RNG (``nn.init.uniform_`` on a fresh tensor). Needs torch."""
    name = "broken: own generator ignores the seed (torch's global RNG)"

    def projection(self, seed, r, n_in, n_out, group, device):
        import torch
        bA, bB = float(kaiming_bound(n_in)), float(kaiming_bound(r))
        A = torch.empty(r, n_in).uniform_(-bA, bA)
        B = torch.empty(n_out, r).uniform_(-bB, bB)
        return A.numpy(), B.numpy()


class OwnFixedSeed(OwnGeneratorUniform):
    """The seed never reaches the sampler: a config default of 0 is used whatever is asked."""
    name = "broken: own generator with a fixed seed 0"

    def projection(self, seed, r, n_in, n_out, group, device):
        return _uniform(np.random.default_rng(0), r, n_in, n_out)


class OwnGeneratorKept(OwnGeneratorUniform):
    """Seeds one generator at construction and keeps drawing from it: each call gives new A and B."""
    name = "broken: own generator kept between calls"

    def __init__(self) -> None:
        self.rng = np.random.default_rng(1234)

    def projection(self, seed, r, n_in, n_out, group, device):
        return _uniform(self.rng, r, n_in, n_out)


class OwnWithReload(OwnGeneratorUniform):
    """Conforming: saves the seed and the vectors (float64, exact), and on load draws A and B
    again from a generator seeded from the saved seed."""
    name = "own generator with its own save/load"
    capabilities = OwnGeneratorUniform.capabilities | {"reload"}

    def _layer_y(self, c: LayerCase, seed, ld, lb):
        A, B = self.projection(seed, c.r, c.in_features, c.out_features, 0, c.device)
        return vera_ref.forward(c.x, c.W, c.bias, A, B, ld, lb, layout=c.layout, dtype=c.dtype)

    def _save_vectors(self, c: LayerCase, folder: Path) -> None:
        np.savez(folder / "vectors.npz", lambda_d=c.lambda_d, lambda_b=c.lambda_b)

    def save_layer(self, c: LayerCase, folder):
        (Path(folder) / "config.json").write_text(json.dumps({"seed": str(c.seed), "r": c.r}))
        self._save_vectors(c, Path(folder))
        return self._layer_y(c, c.seed, c.lambda_d, c.lambda_b)

    def _loaded_vectors(self, c: LayerCase, folder: Path):
        with np.load(folder / "vectors.npz") as z:
            return z["lambda_d"].astype(np.float64), z["lambda_b"].astype(np.float64)

    def load_layer(self, c: LayerCase, folder):
        seed = int(json.loads((Path(folder) / "config.json").read_text())["seed"])
        return self._layer_y(c, seed, *self._loaded_vectors(c, Path(folder)))


class OwnReloadRedraws(OwnWithReload):
    """AdapterHub's reload: the seed is saved but not used on load; the fresh layer draws A and B
    from NumPy's global RNG, which a new process finds in another state."""
    name = "broken: reload re-draws A and B from the global RNG"

    def load_layer(self, c: LayerCase, folder):
        ld, lb = self._loaded_vectors(c, Path(folder))
        bA, bB = float(kaiming_bound(c.in_features)), float(kaiming_bound(c.r))
        A = np.random.uniform(-bA, bA, (c.r, c.in_features)).astype(np.float32)
        B = np.random.uniform(-bB, bB, (c.out_features, c.r)).astype(np.float32)
        return vera_ref.forward(c.x, c.W, c.bias, A, B, ld, lb, layout=c.layout, dtype=c.dtype)


class OwnReloadHalfVectors(OwnWithReload):
    """Saves lambda_d and lambda_b as float16 to halve the checkpoint: a float32 layer loads others."""
    name = "broken: reload saves the vectors in float16"

    def _save_vectors(self, c: LayerCase, folder: Path) -> None:
        np.savez(folder / "vectors.npz", lambda_d=c.lambda_d.astype(np.float16),
                 lambda_b=c.lambda_b.astype(np.float16))


class OwnReloadLoadsNothing(OwnWithReload):
    """load_state_dict(strict=False) with keys that do not match: nothing is loaded and the fresh
    layer keeps its initial vectors (lambda_d = 0.1, lambda_b = 0: the base layer alone)."""
    name = "broken: reload loads nothing (strict=False, keys renamed)"

    def _loaded_vectors(self, c: LayerCase, folder: Path):
        return np.full(c.r, 0.1), np.zeros(c.out_features)


CAUGHT_BY: dict = {  # class -> the name of the check that catches it
    OwnSeedIgnoredTorch: "own_determinism", OwnFixedSeed: "own_determinism", OwnGeneratorKept: "own_determinism",
    OwnReloadRedraws: "own_reload", OwnReloadHalfVectors: "own_reload", OwnReloadLoadsNothing: "own_reload",
}
# conforming in what they declare (tests/conformance/test_own_generator.py asserts they pass)
CONFORMING_DECLARED = [OwnWithReload]
