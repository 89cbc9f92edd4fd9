"""The conformance kit as the only oracle of a mutation run (issue 24: "measure the kit the same way").

tools/mutate.py normally kills a mutant of vera_torch with vera_torch's own tests. With this file
as its tests, a mutant is killed only when the *kit* fails the shipped vera_torch wrapper
(impls/torch_impl.py) on it: the mutation score is then the kit's, as a third party's wrapper would
see it. The kit's oracle is the NumPy reference (vera_ref), which a vera_torch mutant never changes.

    python tools/mutate.py --file backends/vera_torch/functional.py \\
        --tests tools/planted/kit_oracle.py --jobs 1 --sample 30 --seed 1 --minutes 8
    python tools/mutate.py --file backends/vera_torch/philox.py \\
        --tests tools/planted/kit_oracle.py --jobs 1 --sample 20 --seed 1 --minutes 6

One test per check and dtype, few examples, so a mutant runs only the checks whose code reached
its line (mutate.py traces which test executes which line). Not collected by ``make test``
(testpaths = tests).
"""
import pytest

from vera_conformance.checks import CHECKS
from vera_conformance.impls.torch_impl import make
from vera_conformance.runner import run

EXAMPLES = 4
# the generator and layer-math checks (numerics, at sizes up to 16384, is left to the tally: under
# mutate.py's line tracer it alone would take the campaign's budget)
MATH = ("philox_kat", "projection_vectors", "projection", "forward", "generator_probe", "stateless", "backward",
        "eval_dropout", "eval_dropout_backward", "train", "merge", "unmerge", "merged_forward", "math_vectors")
ITEMS = [(c.name, d) for c in CHECKS if c.name in MATH for d in (("float32", "bfloat16") if c.per_dtype else (None,))
         if not c.dtypes or (d or "float32") in c.dtypes]


@pytest.mark.parametrize("check, dtype", ITEMS, ids=[f"{c}[{d}]" if d else c for c, d in ITEMS])
def test_kit_passes_vera_torch(check, dtype):
    results = run(make(), "kit_oracle", ["cpu"], [dtype or "float32"], EXAMPLES, only=[check], echo=lambda s: None)
    failed = [(r.id, r.reason[:300]) for r in results if r.status == "failed"]
    assert not failed, failed
