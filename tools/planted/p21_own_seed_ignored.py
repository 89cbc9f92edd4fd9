"""An own generator that ignores the seed: A and B come from NumPy's global RNG, as AdapterHub's
VeRA ignores ``init_weights_seed`` and draws from torch's.

The distribution is right, so a distribution test passes; but two runs (or a reload) give other
projections. Spec 5.4: results are a function of the inputs, never of earlier calls or global
state (and 2.1: the pair is a function of the seed).
"""
import numpy as np

from _own import OwnGenerator

CLAUSE = "5.4"
AREA = "generator"
EXPECT = "caught"
BASE = "b_own"


class SeedIgnored(OwnGenerator):
    name = "planted: own generator ignores the seed"

    def draw(self, seed, r, n_in, n_out, group):
        a, b = np.sqrt(6.0 / n_in), np.sqrt(6.0 / r)
        return (np.random.uniform(-a, a, (r, n_in)).astype(np.float32),
                np.random.uniform(-b, b, (n_out, r)).astype(np.float32))


make = SeedIgnored
