"""Checks of an implementation's own generator (``generator = "own"``) and of its own save/load
(the ``reload`` capability).

An own generator (a framework's uniform sampler) is not the spec's, so its bits are not checked
(spec 5.3); what still holds is that A and B are a function of the seed (spec 5.4: no result
depends on earlier calls). ``own_determinism`` asks for the same seed twice (after a warm-up call)
with the global RNGs of Python's ``random``, NumPy and torch reseeded and drawn from before each: a generator that
ignores the seed and draws from a global RNG (AdapterHub's ``init_weights_seed`` is ignored this
way), keeps a generator between calls, or seeds from entropy gives other bits; another seed must
give another A and another B (a seed that never reaches the sampler gives the same).

``own_reload`` saves a layer and loads it back through the implementation's own save/load, the
global RNGs moved in between as a new process would find them: the forward must be the same bit
for bit (a reload that re-draws A and B from a global RNG, or saves the vectors in a narrower
dtype, gives another), and the saved layer's forward must be the forward of its projection
(A and B of ``projection(seed, ...)``, spec 5.2).
"""
from __future__ import annotations

import dataclasses
import random
import sys
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import strategies as st

from vera_ref.tolerance import compare

from . import strategies as S
from .check_base import (_C, Check, Mismatch, Outcome, _build, _crash, _expect, _layouts, _own_generator,
                         _property, _specs, _tol, _USED_C)
from .checks_math import _forward_ref
from .protocol import LayerCase

# the global RNGs are moved to these states: seeded, then drawn from (k % 5 + 1 values each)
MOVES = (11, 22, 33)


class GlobalRNGs:
    """Saves the states of Python's ``random``, NumPy's global RNG and torch's default generators
    (CPU, and CUDA when initialised) on entry and restores them on exit, so a check that moves
    them leaves the rest of the run as it found it. torch is moved only if imported (by the
    implementation: a lazy import on the first call is moved from the second call on)."""

    def __enter__(self) -> "GlobalRNGs":
        self.py, self.np = random.getstate(), np.random.get_state()
        torch = sys.modules.get("torch")
        self.torch = torch.get_rng_state() if torch is not None else None
        self.cuda = torch.cuda.get_rng_state_all() if torch is not None and torch.cuda.is_initialized() else None
        return self

    def __exit__(self, *exc) -> None:
        random.setstate(self.py)
        np.random.set_state(self.np)
        torch = sys.modules.get("torch")
        if torch is not None and self.torch is not None:
            torch.set_rng_state(self.torch)
        if torch is not None and self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)

    @staticmethod
    def move(k: int, device: str = "cpu") -> list[str]:
        """Reseed every global RNG with ``k`` and draw k % 5 + 1 values from each; the names moved."""
        n = k % 5 + 1
        random.seed(k)
        [random.random() for _ in range(n)]
        np.random.seed(k)
        np.random.random(n)
        moved = ["random", "numpy"]
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.manual_seed(k)  # every device's default generator
            torch.rand(n)
            if device == "cuda" and torch.cuda.is_available():
                torch.rand(n, device="cuda")
            moved.append("torch")
        return moved


def _pair(impl, seed, r, n_in, n_out, device) -> tuple[np.ndarray, np.ndarray]:
    A, B = impl.projection(seed, r, n_in, n_out, 0, device)
    return np.asarray(A), np.asarray(B)


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and np.ascontiguousarray(a).tobytes() == \
        np.ascontiguousarray(b).tobytes()


def _first_diff(a: np.ndarray, b: np.ndarray) -> str:
    if a.dtype != b.dtype or a.shape != b.shape:
        return f"{a.dtype} {a.shape} vs {b.dtype} {b.shape}"
    flat_a, flat_b = a.reshape(-1), b.reshape(-1)
    bits_a = np.ascontiguousarray(flat_a).view(np.uint8).reshape(flat_a.size, -1)
    bits_b = np.ascontiguousarray(flat_b).view(np.uint8).reshape(flat_b.size, -1)
    ne = np.flatnonzero((bits_a != bits_b).any(axis=1))
    i = tuple(int(v) for v in np.unravel_index(ne[0], a.shape))
    return f"{ne.size} of {a.size} elements differ; first at {i}: {float(a[i])!r} vs {float(b[i])!r}"


def check_own_determinism(impl, device, dtype, max_examples, case=None) -> Outcome:
    """spec 5.3/5.4: an own generator's A and B are a function of the seed. After a warm-up call,
    the same seed twice, the global RNGs moved to other states before each, gives the same bits
    (on a difference, a third call in the first call's global state names the cause); another
    seed gives another A and another B."""
    def body(args):
        seed, r, n_in, n_out, other = (int(a) for a in (args["args"] if isinstance(args, dict) else args))
        if other == seed:
            other = seed ^ 1
        what = f"(seed {seed}, r {r}, n_in {n_in}, n_out {n_out})"
        with GlobalRNGs() as g:
            _pair(impl, seed, r, n_in, n_out, device)  # a warm-up: a framework imported lazily is moved from now on
            g.move(MOVES[0], device)
            first = _pair(impl, seed, r, n_in, n_out, device)
            moved = g.move(MOVES[1], device)
            again = _pair(impl, seed, r, n_in, n_out, device)
            for name, x, y in zip("AB", first, again):
                if _same_bits(x, y):
                    continue
                g.move(MOVES[0], device)  # the first call's global state again: global RNG or state?
                third = _pair(impl, seed, r, n_in, n_out, device)[0 if name == "A" else 1]
                why = ("it follows the global RNG (the same global state gives it back): the seed is ignored or "
                       "mixed with global state; draw from a generator seeded from the seed"
                       if _same_bits(x, third) else
                       "it differs call to call even with the global RNGs in the same state: a generator kept "
                       "between calls, or one seeded from entropy")
                raise Mismatch(f"{name} of {what} differs between two calls with the global RNGs of "
                               f"{', '.join(moved)} reseeded and drawn from in between ({_first_diff(x, y)}): {why}")
            g.move(MOVES[2], device)
            others = _pair(impl, other, r, n_in, n_out, device)
        same = [name for name, x, y in zip("AB", first, others) if _same_bits(x, y)]
        if same:
            raise Mismatch(f"seeds {seed} and {other} give the same {' and '.join(same)} (r {r}, n_in {n_in}, "
                           f"n_out {n_out}): the seed does not reach the sampler (a fixed seed such as 0?)")
        return None
    strategy = st.tuples(st.integers(0, 2**32 - 1), st.sampled_from([1, 4, 16, 64]), st.sampled_from([16, 64, 300]),
                         st.sampled_from([16, 64, 300]), st.integers(0, 2**32 - 1))
    explicit = [(0, 8, 64, 32, 1), (2**32 - 1, 1, 16, 16, 2**31), (42, 64, 300, 16, 43)]
    out = _property(strategy, body, max(3, max_examples // 5), case, explicit)
    if out.status == "passed" and case is None:
        out.note = _wide_seeds(impl, device)
    return out


def _wide_seeds(impl, device) -> str:
    """What a pass leaves open: seeds of the file format are in [0, 2^64) (spec 4.3); a sampler that
    keeps 32 bits of them (torch's CPU generator does) gives one projection to seeds 2^32 apart."""
    try:
        with GlobalRNGs():
            a, b = (_pair(impl, s, 4, 16, 16, device) for s in (5, 5 + 2**32))
    except Exception as exc:
        return f"projection(seed 2^32 + 5) raised {_crash(exc)}: seeds in [0, 2^64) are valid (spec 4.3)"
    if all(_same_bits(x, y) for x, y in zip(a, b)):
        return ("seeds 5 and 2^32 + 5 give the same A and B: the sampler keeps 32 bits of the seed (torch's CPU "
                "generator does), so seeds of the file format (spec 4.3: [0, 2^64)) 2^32 apart share a projection")
    return ""


# --- reload through the implementation's own save/load ---------------------------------------------

def _unpadded(spec: dict) -> dict:
    """A reload case: n_in = in, n_out = out, group 0, evaluation mode, so a framework's layer
    draws A and B for its own shape, as its projection(seed, r, in, out) does."""
    return {**spec, "n_in": spec["in_features"], "n_out": spec["out_features"], "group": 0, "dropout": 0.0}


def _nan_adapter(c: LayerCase) -> LayerCase:
    """What load_layer gets: the base layer and input; the adapter only from what was saved."""
    nan = lambda a: np.full(np.shape(a), np.nan)  # noqa: E731
    return dataclasses.replace(c, lambda_d=nan(c.lambda_d), lambda_b=nan(c.lambda_b), A=nan(c.A).astype(np.float32),
                               B=nan(c.B).astype(np.float32))


def check_own_reload(impl, device, dtype, max_examples, case=None) -> Outcome:
    """A layer saved and loaded back through the implementation's own save/load (``reload``), the
    global RNGs moved between the two as a new process finds them, computes the same forward bit
    for bit; the saved layer computes the forward of its projection within spec 5.2."""
    own = getattr(impl, "generator", "philox4x32-10") == "own"

    def body(spec):
        c = _build(impl, _unpadded(spec), dtype, device)
        if own:  # the projection the layer must use: the implementation's own, of the layer's shape
            A, B = impl.projection(c.seed, c.r, c.n_in, c.n_out, 0, device)
            c = dataclasses.replace(c, A=np.asarray(A, np.float32), B=np.asarray(B, np.float32))
        with GlobalRNGs() as g, tempfile.TemporaryDirectory() as d:
            g.move(MOVES[0], device)
            saved = np.asarray(impl.save_layer(c, Path(d)), np.float64)
            moved = g.move(MOVES[1], device)
            loaded = np.asarray(impl.load_layer(_nan_adapter(c), Path(d)), np.float64)
        worst = _expect(saved, *_forward_ref(c, impl.scale(c.r)), dtype,
                        "y of the layer save_layer built (against the forward of "
                        + ("its projection(seed, r, in, out)'s A and B)" if own else "the case's A and B)"),
                        _C("forward", c, dtype))
        if _same_bits(saved, loaded):
            return worst
        if loaded.shape != saved.shape:
            raise Mismatch(f"y after reload: shape {loaded.shape}, saved {saved.shape}")
        if np.isnan(loaded).any():
            raise Mismatch("y after reload has NaN: the loaded layer uses the lambda_d/lambda_b/A/B of the case given "
                           "to load_layer (NaN there) instead of what was saved")
        diff = np.abs(loaded - saved)
        i = tuple(int(v) for v in np.unravel_index(int(np.argmax(diff)), diff.shape))
        bits = lambda a: np.ascontiguousarray(a).view(np.uint64)  # noqa: E731
        n = int(np.count_nonzero(bits(loaded) != bits(saved)))
        ref, S_ = _forward_ref(c, impl.scale(c.r))
        near = compare(loaded, ref, S_, dtype, _C("forward", c, dtype))
        why = (f"it is still within spec 5.2 of the saved layer's function ({near.ratio:.3g} of the bound): the saved "
               "values were rounded (vectors saved in a narrower dtype?) or the loaded layer computes another way"
               if near.ok else
               f"it is another function ({near.ratio:.3g} times the spec 5.2 bound): A and B re-drawn on load (from a "
               "global RNG) instead of from the saved seed, or vectors not loaded?")
        raise Mismatch(f"the layer loaded back through the implementation's own save/load (the global RNGs of "
                       f"{', '.join(moved)} moved in between) computes another forward: {n} of {saved.size} outputs "
                       f"differ in bits, max |diff| {float(diff[i]):.3g} at {i} (saved {float(saved[i])!r}, loaded "
                       f"{float(loaded[i])!r}); {why}")
    _USED_C.clear()
    lay = _layouts(impl)
    explicit = [_unpadded(s) for s in S.explicit(lay)[:3]]
    strategy = _specs(impl, dropout=False).map(_unpadded)
    out = _property(strategy, body, max(3, max_examples // 5), case, explicit)
    out.tolerance = _tol(dtype)
    return out


def _reload_needs(impl) -> str | None:
    if getattr(impl, "generator", "") == "own" and "generator" not in impl.capabilities:
        return (f"{impl.name} declares an own generator without the generator capability: the A and B its layer "
                "must use (projection(seed, ...)) are unknown")
    return None


CHECKS: list = [
    Check("own_determinism", "generator", "G", False, check_own_determinism,
          "an own generator: one seed gives the same A and B whatever the global RNGs did, another seed others",
          needs=_own_generator, case_keys=("args",)),
    Check("own_reload", "reload", "M", True, check_own_reload,
          "a layer saved and loaded by the implementation's own save/load: the same forward bit for bit",
          needs=_reload_needs),
]
