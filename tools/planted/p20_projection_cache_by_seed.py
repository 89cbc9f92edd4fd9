"""Projections are cached by (seed, r) only: a later layer with other (n_in, n_out) gets the first
layer's tables.

A cache added for speed whose key misses two of the pair's five inputs. Spec 2.1 (the pair is a
function of seed, r, n_in, n_out, group) and 5.4 (results must not depend on earlier calls).
"""
from _plant import reference_impl, torch_impl  # noqa: F401

CLAUSE = "5.4"
AREA = "state"
EXPECT = "caught"


def make():
    return reference_impl(impl=[("    def _proj(self, c: LayerCase):\n"
                                 "        return self.projection(c.seed, c.r, c.n_in, c.n_out, c.group, c.device)",
                                 "    _cache: dict = {}\n\n"
                                 "    def _proj(self, c: LayerCase):\n"
                                 "        key = (c.seed, c.r)\n"
                                 "        if key not in self._cache:\n"
                                 "            self._cache[key] = self.projection(c.seed, c.r, c.n_in, c.n_out, "
                                 "c.group, c.device)\n"
                                 "        A, B = self._cache[key]\n"
                                 "        if A.shape[1] < c.n_in or B.shape[0] < c.n_out:  # too small: make it again\n"
                                 "            self._cache[key] = A, B = self.projection(c.seed, c.r, c.n_in, "
                                 "c.n_out, c.group,"
                                 " c.device)\n"
                                 "        return A, B")],
                          name="planted: projection cache keyed by (seed, r)")
