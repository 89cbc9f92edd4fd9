"""An own generator that is right on its first use, but whose load re-draws A and B from the global
RNG instead of from the saved seed (the seed is saved and never read).

Spec 5.4 (and 4's promise that an adapter is rebuilt from its seed): a reloaded layer computes
what the saved one did.
"""
import numpy as np

from _own import OwnGenerator

CLAUSE = "5.4"
AREA = "generator"
EXPECT = "caught"
BASE = "b_own"


class ReloadRedraws(OwnGenerator):
    name = "planted: own generator re-draws on load"

    def reloaded_projection(self, z):
        r, n_in, n_out = int(z["r"]), int(z["n_in"]), int(z["n_out"])
        a, b = np.sqrt(6.0 / n_in), np.sqrt(6.0 / r)
        return (np.random.uniform(-a, a, (r, n_in)).astype(np.float32),
                np.random.uniform(-b, b, (n_out, r)).astype(np.float32))


make = ReloadRedraws
