"""Own generators (``generator = "own"``) and the ``reload`` capability (issue 24): one seed gives
the same A and B whatever the global RNGs did, another seed others; a layer saved and loaded back
through the implementation's own save/load computes the same forward bit for bit. Each bug of the
kind seen in real libraries is caught with its diagnosis, and the conforming ones pass."""
import random

import numpy as np
import pytest

from vera_conformance.checks import CHECKS  # first: checks.py imports checks_own at its end
from vera_conformance.checks_own import GlobalRNGs
from vera_conformance.impls import broken as Bk
from vera_conformance.impls import broken_own as Bo
from vera_conformance.impls.reference import Reference
from vera_conformance.protocol import CAPABILITIES, check_declarations
from vera_conformance.runner import run, summary
from vera_ref.projection import kaiming_bound

CHECK = {c.name: c for c in CHECKS}


def _run(impl, only, dtypes=("float32",), examples=8):
    return run(impl, "x:y", ["cpu"], list(dtypes), examples, echo=lambda s: None, only=only)


def _one(impl, check, dtype="float32"):
    (r,) = _run(impl, [check], [dtype])
    return r


class _Sampler(Bo.OwnGeneratorUniform):
    """An own generator whose A and B come from ``draw(seed, size)`` in [0, 1)."""
    name = "own generator under test"

    def draw(self, seed, size):  # pragma: no cover - overridden
        raise NotImplementedError

    def projection(self, seed, r, n_in, n_out, group, device):
        bA, bB = float(kaiming_bound(n_in)), float(kaiming_bound(r))
        u = 2 * np.asarray(self.draw(seed, r * n_in + n_out * r), np.float64) - 1  # A's values, then B's
        return (u[:r * n_in] * bA).astype(np.float32).reshape(r, n_in), \
            (u[r * n_in:] * bB).astype(np.float32).reshape(n_out, r)


def _global_sampler(which):
    """A sampler that ignores the seed and draws from one global RNG."""
    def draw(self, seed, size):
        if which == "random":
            return [random.random() for _ in range(size)]
        if which == "numpy":
            return np.random.random(size)
        import torch
        return torch.rand(size, dtype=torch.float64).numpy()
    return type(f"Global_{which}", (_Sampler,), {"draw": draw, "name": f"seed ignored, {which}'s global RNG"})()


@pytest.mark.parametrize("which", ["random", "numpy", "torch"])
def test_a_sampler_that_ignores_the_seed_is_caught_whichever_global_rng_it_uses(which):
    if which == "torch":
        pytest.importorskip("torch")
    r = _one(_global_sampler(which), "own_determinism")
    assert r.status == "failed"
    assert "differs between two calls with the global RNGs of random, numpy" in r.reason
    assert "it follows the global RNG (the same global state gives it back): the seed is ignored" in r.reason
    assert r.case == {"args": [0, 8, 64, 32, 1]}  # the first explicit example: seed 0, as AdapterHub's default


def test_adapterhub_pattern_torch_global_rng_is_caught_and_a_seeded_torch_generator_passes():
    torch = pytest.importorskip("torch")
    r = _one(Bo.OwnSeedIgnoredTorch(), "own_determinism")
    assert r.status == "failed" and "random, numpy, torch reseeded" in r.reason and "follows the global RNG" in r.reason

    class SeededTorch(_Sampler):
        name = "torch.Generator seeded from the seed"

        def draw(self, seed, size):
            return torch.rand(size, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)).numpy()
    r = _one(SeededTorch(), "own_determinism", "float32")
    assert (r.status, r.examples) == ("passed", 6)  # 3 explicit + 3 drawn
    # what the pass leaves open: torch's CPU generator keeps 32 bits of the seed
    assert r.note.startswith("seeds 5 and 2^32 + 5 give the same A and B: the sampler keeps 32 bits of the seed")


def test_a_pass_notes_seeds_the_sampler_cannot_take_and_says_nothing_when_it_takes_all():
    assert _one(Bk.OwnGeneratorUniform(), "own_determinism").note == ""  # NumPy's Generator takes 64-bit seeds

    class LegacyRandomState(_Sampler):  # np.random.RandomState refuses seeds >= 2^32
        def draw(self, seed, size):
            return np.random.RandomState(seed).random_sample(size)
    r = _one(LegacyRandomState(), "own_determinism")
    assert r.status == "passed" and r.note.startswith("projection(seed 2^32 + 5) raised ValueError: ")
    assert r.note.endswith("seeds in [0, 2^64) are valid (spec 4.3)")


def test_state_kept_between_calls_entropy_and_a_fixed_seed_are_each_named():
    r = _one(Bo.OwnGeneratorKept(), "own_determinism")
    assert r.status == "failed" and "differs call to call even with the global RNGs in the same state" in r.reason

    class Entropy(_Sampler):
        def draw(self, seed, size):
            return np.random.default_rng().random(size)  # no seed: OS entropy
    r = _one(Entropy(), "own_determinism")
    assert r.status == "failed" and "a generator kept between calls, or one seeded from entropy" in r.reason
    r = _one(Bo.OwnFixedSeed(), "own_determinism")
    assert r.status == "failed"
    assert r.reason == ("seeds 0 and 1 give the same A and B (r 8, n_in 64, n_out 32): the seed does not reach the "
                        "sampler (a fixed seed such as 0?)")

    class BIgnoresSeed(Bo.OwnGeneratorUniform):  # A from the seed, B from a fixed one
        def projection(self, seed, r, n_in, n_out, group, device):
            return super().projection(seed, r, n_in, n_out, group, device)[0], \
                super().projection(7, r, n_in, n_out, group, device)[1]
    r = _one(BIgnoresSeed(), "own_determinism")
    assert r.status == "failed" and "give the same B (" in r.reason


def test_the_shipped_conforming_own_generators_pass():
    own = ["projection_distribution", "own_determinism", "own_reload", "forward", "stateless"]
    for impl in (Bk.OwnGeneratorUniform(), Bo.OwnWithReload()):  # every check: the meta-test runs Bk's
        results = _run(impl, own, ("float32",), 4) + _run(impl, ["own_reload"], ("bfloat16", "float64"), 4)
        assert summary(results)["failed"] == 0, [(r.id, r.reason) for r in results if r.status == "failed"]
        assert "own_determinism_cpu" in {r.id for r in results if r.status == "passed"}
    assert {r.id for r in results if r.status == "passed"} >= {
        "own_reload[float32]_cpu", "own_reload[bfloat16]_cpu", "own_reload[float64]_cpu"}
    # Bk.OwnGeneratorUniform has no save/load: skipped with the reason, never passed
    r = _one(Bk.OwnGeneratorUniform(), "own_reload")
    assert (r.status, r.reason) == ("skipped", "own generator, uniform (NumPy) does not claim the 'reload' capability")


def test_the_check_leaves_the_global_rngs_as_it_found_them():
    torch = pytest.importorskip("torch")
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    before = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state().clone())
    assert _one(Bo.OwnWithReload(), "own_determinism").status == "passed"
    assert _one(Bo.OwnWithReload(), "own_reload").status == "passed"
    assert random.getstate() == before[0]
    assert np.array_equal(np.random.get_state()[1], before[1]) and torch.equal(torch.get_rng_state(), before[2])
    with GlobalRNGs() as g:  # and the moves do move every one of them
        assert g.move(3) == ["random", "numpy", "torch"]
        moved = (random.random(), float(np.random.random()), float(torch.rand(1)))
        g.move(4)
        assert (random.random(), float(np.random.random()), float(torch.rand(1)))[0] != moved[0]
        g.move(3)
        assert (random.random(), float(np.random.random()), float(torch.rand(1))) == moved


@pytest.mark.parametrize("cls, diagnosis", [
    (Bo.OwnReloadRedraws, "it is another function"),
    (Bo.OwnReloadLoadsNothing, "it is another function"),
    (Bo.OwnReloadHalfVectors, "it is another function"),
])
def test_reload_bugs_are_caught(cls, diagnosis):
    r = _one(cls(), "own_reload")
    assert r.status == "failed" and r.reason.startswith(
        "the layer loaded back through the implementation's own save/load (the global RNGs of random, numpy")
    assert diagnosis in r.reason and "outputs differ in bits" in r.reason
    # the case replays: the same failure from the printed JSON
    out = CHECK["own_reload"].run(cls(), "cpu", "float32", 1, case=r.case)
    assert out.status == "failed" and out.reason == r.reason
    assert r.case["n_in"] == r.case["in_features"] and r.case["group"] == 0  # the layer's own shape


def test_reload_catches_a_loader_that_uses_the_callers_vectors_and_a_save_that_rounds():
    class UsesCaseVectors(Bo.OwnWithReload):
        def load_layer(self, c, folder):
            return self._layer_y(c, c.seed, c.lambda_d, c.lambda_b)
    r = _one(UsesCaseVectors(), "own_reload")
    assert r.status == "failed" and r.reason.startswith("y after reload has NaN")

    class RoundsLambdaB(Bo.OwnWithReload):  # one ulp of float32 on lambda_b: within 5.2, not the same bits
        def _save_vectors(self, c, folder):
            lb = np.nextafter(c.lambda_b.astype(np.float32), np.float32(np.inf)).astype(np.float64)
            np.savez(folder / "vectors.npz", lambda_d=c.lambda_d, lambda_b=lb)
    r = _one(RoundsLambdaB(), "own_reload")
    assert r.status == "failed" and "it is still within spec 5.2 of the saved layer's function" in r.reason


def test_reload_checks_the_saved_layer_against_its_projection():
    class LayerIgnoresProjection(Bo.OwnWithReload):  # the layer draws from seed + 1: not projection(seed)
        def save_layer(self, c, folder):
            super().save_layer(c, folder)
            return self._layer_y(c, c.seed + 1, c.lambda_d, c.lambda_b)
    r = _one(LayerIgnoresProjection(), "own_reload")
    assert r.status == "failed" and r.reason.startswith(
        "y of the layer save_layer built (against the forward of its projection(seed, r, in, out)'s A and B)")


def test_reload_declarations_and_skips():
    assert "reload" in CAPABILITIES
    check_declarations(Bo.OwnWithReload())  # the capability is known

    class OwnWithoutGenerator(Bo.OwnWithReload):
        capabilities = frozenset({"forward", "reload"})
    r = _one(OwnWithoutGenerator(), "own_reload")
    assert r.status == "skipped" and "own generator without the generator capability" in r.reason
    r = _one(Reference(), "own_determinism")
    assert r.status == "skipped" and "(this check is for 'own')" in r.reason


def test_reload_of_a_philox_layer_is_checked_against_the_case_projection():
    """Not only own generators: a spec-generator layer saved as a spec file (vera_ref) and loaded
    back computes the same forward. Called directly: the runner's watch list does not name
    save_layer/load_layer (the projection call of an own generator is what it counts)."""
    import vera_ref

    class SpecFile(Reference):
        capabilities = Reference.capabilities | {"reload"}

        def save_layer(self, c, folder):
            ad = vera_ref.new_adapter([("layer", c.in_features, c.out_features, c.layout)], r=c.r, seed=c.seed)
            ad.lambda_d["layer"], ad.lambda_b["layer"] = c.lambda_d.astype(np.float32), c.lambda_b.astype(np.float32)
            vera_ref.save_adapter(ad, folder / "a.safetensors")
            return self.forward(c)

        def load_layer(self, c, folder):
            ad = vera_ref.load_adapter(folder / "a.safetensors")
            A, B = vera_ref.projection(ad.config.seed, c.r, c.n_in, c.n_out, 0)
            return vera_ref.forward(c.x, c.W, c.bias, A, B, ad.lambda_d["layer"].astype(np.float64),
                                    ad.lambda_b["layer"].astype(np.float64), layout=c.layout, dtype=c.dtype)
    out = CHECK["own_reload"].run(SpecFile(), "cpu", "float32", 4)
    assert out.status == "passed" and out.examples == 6 and out.worst_ratio <= 1  # 3 explicit + 3 drawn
