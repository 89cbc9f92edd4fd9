"""The conformance checks (spec 5.3 levels G, F, M, T), each a property over hypothesis cases
or a walk over spec/vectors. A check returns an Outcome; it never raises for a wrong answer.

Every check is ``run(impl, device, dtype, max_examples, case=None)``: with ``case`` (the JSON a
failure printed) it replays exactly that case instead of searching. ``CHECKS`` lists them all, in
the order a run reports them; each lives in the module of its concern (check_base holds what they
share), and their names are re-exported here for the tests and the runner.
"""
from __future__ import annotations

from .check_base import (VECTORS, Check, Mismatch, Outcome, _bits_equal, _build, _C, _crash, _expect,  # noqa: F401
                         _gen_name, _jsonable, _layouts, _no_scale, _not_own, _own_generator, _philox_generator,
                         _property, _specs, _tol, _unscaled, _USED_C, _where, _with_dropout)
from .checks_files import (_adapter_diff, _adapters, _file_tests, check_files_invalid,  # noqa: F401
                           check_files_roundtrip, check_files_valid)
from .checks_generator import (_projection_equal, check_philox_kat, check_projection,  # noqa: F401
                               check_projection_distribution, check_projection_vectors)
from .checks_math import (_backward_ref, _forward_ref, _gradients, _kw, _layer_property,  # noqa: F401
                          _merge_ref, _sequences, _twin, check_adapter_scale, check_backward,
                          check_eval_dropout, check_eval_dropout_backward, check_forward, check_generator_probe,
                          check_math_vectors, check_merge, check_merged_forward, check_stateless, check_train,
                          check_unmerge, tf32_probe)
from .checks_numeric import CHECKS as _NUMERIC_CHECKS  # adversarial numerics at real sizes
from .checks_own import CHECKS as _OWN_CHECKS  # own generators: determinism, reload
from .checks_quantized import CHECKS as _QUANTIZED_CHECKS  # quantized bases
from .checks_writer import CHECKS as _WRITER_CHECKS  # writers: bytes and fields

CHECKS = [
    Check("philox_kat", "generator", "G", False, check_philox_kat, "the 55 Random123 philox4x32-10 vectors",
          needs=_philox_generator, case_keys=("tcId",)),
    Check("projection_vectors", "generator", "G", False, check_projection_vectors, "spec/vectors/projections.json",
          needs=_philox_generator, case_keys=("tcId",)),
    Check("projection", "generator", "G", False, check_projection, "random (seed, r, n_in, n_out, group): bit-exact",
          needs=_not_own, case_keys=("args",)),
    Check("projection_distribution", "generator", "G", False, check_projection_distribution,
          "an own generator: bounds and uniformity of A and B", needs=_own_generator,
          case_keys=("args",)),
    Check("forward", "forward", "M", True, check_forward, "spec 3.2-3.3, whole output and adapter term (5.2.1)"),
    Check("generator_probe", "forward", "G", True, check_generator_probe,
          "one-hot forward: the projection inside the layer, bit-exact (5.1)", dtypes=("float32", "float64"),
          needs=_no_scale),
    Check("stateless", "forward", "M", True, check_stateless, "no state between calls (5.4)",
          case_keys=("sequence",)),
    Check("adapter_scale", "forward", "M", False, check_adapter_scale, "no scale on the adapter term (3.2)",
          case_keys=()),
    Check("backward", "backward", "T", True, check_backward, "spec 3.4 against the float64 reference"),
    Check("eval_dropout", "forward", "T", True, check_eval_dropout, "evaluation mode drops nothing (3.3)",
          needs=_with_dropout),
    Check("eval_dropout_backward", "backward", "T", True, check_eval_dropout_backward,
          "evaluation mode drops nothing in the gradients either (3.3)", needs=_with_dropout),
    Check("train", "train", "T", True, check_train, "SGD steps, trainable parameters, frozen tensors (5.3)"),
    Check("merge", "merge", "M", True, check_merge, "spec 3.5, merged weight and Delta W"),
    Check("unmerge", "unmerge", "M", True, check_unmerge, "spec 3.6"),
    Check("merged_forward", "merged_forward", "M", True, check_merged_forward,
          "the forward of a merged layer, and after unmerge (3.5, 3.6)"),
    Check("math_vectors", "forward", "M", True, check_math_vectors, "spec/vectors/math.json",
          dtypes=("float32", "float64"), needs=_unscaled, case_keys=("tcId",)),
    Check("files_valid", "files", "F", False, check_files_valid, "every valid file vector reads right, every field",
          case_keys=("tcId",)),
    Check("files_invalid", "files", "F", False, check_files_invalid,
          "every invalid file vector is refused for its rule (code and field)", case_keys=("tcId",)),
    Check("files_roundtrip", "files", "F", False, check_files_roundtrip,
          "written files pass the reference with every field equal",
          case_keys=("r", "generator", "seed", "sharing", "vector_dtype", "modules", "values_seed")),
]

CHECKS += _NUMERIC_CHECKS + _OWN_CHECKS + _WRITER_CHECKS + _QUANTIZED_CHECKS
