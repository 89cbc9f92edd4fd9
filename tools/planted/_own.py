"""An implementation with its own generator (``generator = "own"``), as third-party libraries
have: the shipped reference's math on A and B drawn by NumPy's uniform sampler with the Kaiming
bounds of spec 1.6, and a save/load of its own (``reload``: the vectors and the seed in an .npz).
``OwnGenerator`` itself conforms; the planted bugs override one method each."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

import vera_ref
from vera_conformance.impls.reference import Reference


class OwnGenerator(Reference):
    name = "own generator (NumPy uniform, seeded)"
    generator = "own"
    capabilities = frozenset({"generator", "forward", "backward", "merge", "unmerge", "train", "reload"})

    def draw(self, seed, r, n_in, n_out, group):
        """A (r, n_in) and B (n_out, r), float32, uniform within the Kaiming bounds, from the seed."""
        rng = np.random.default_rng([int(seed), int(group)])
        a, b = math.sqrt(6.0 / n_in), math.sqrt(6.0 / r)
        return (rng.uniform(-a, a, (r, n_in)).astype(np.float32), rng.uniform(-b, b, (n_out, r)).astype(np.float32))

    def projection(self, seed, r, n_in, n_out, group, device):
        return self.draw(seed, r, n_in, n_out, group)

    def _proj(self, c):  # the math checks give the spec's projections to an own generator's layer
        return c.A, c.B

    def philox(self, counters, key, device):  # no Philox here
        raise NotImplementedError

    philox = None

    def _y(self, c, A, B, ld, lb):
        return vera_ref.forward(c.x, c.W, c.bias, A, B, ld, lb, layout=c.layout, dtype=c.dtype)

    def save_layer(self, c, folder: Path):
        A, B = self.draw(c.seed, c.r, c.n_in, c.n_out, c.group)  # a layer of its own, from the seed
        np.savez(Path(folder) / "adapter.npz", seed=np.uint64(c.seed), r=c.r, n_in=c.n_in, n_out=c.n_out,
                 group=c.group, lambda_d=c.lambda_d, lambda_b=c.lambda_b)
        return self._y(c, A, B, c.lambda_d, c.lambda_b)

    def reloaded_projection(self, z):
        return self.draw(int(z["seed"]), int(z["r"]), int(z["n_in"]), int(z["n_out"]), int(z["group"]))

    def load_layer(self, c, folder: Path):
        z = np.load(Path(folder) / "adapter.npz")
        A, B = self.reloaded_projection(z)
        return self._y(c, A, B, z["lambda_d"], z["lambda_b"])
