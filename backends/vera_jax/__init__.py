"""vera_jax: VeRA for JAX and Flax NNX, bit-identical to the spec's projections (spec 1-4).

    from vera_jax import projection, forward, merge, unmerge       # jax only
    from vera_jax.nnx import VeraParam, apply_vera, load_adapter   # needs flax

Importing vera_jax registers ``vera_jax.projection`` as the ``"jax"`` implementation of the
``philox4x32-10`` generator (``vera_ref.generators.get("philox4x32-10").device("jax")``).
"""
from vera_ref import generators

from .errors import MergeError
from .files import projections, read_adapter
from .layer import adapter_out, delta_weight, forward, merge, unmerge
from .philox import key_of_seed, philox4x32, philox_words, projection, table_values, words_to_float

generators.register_device("philox4x32-10", "jax", projection)

__all__ = ["projection", "philox4x32", "philox_words", "words_to_float", "table_values", "key_of_seed",
           "forward", "adapter_out", "delta_weight", "merge", "unmerge", "read_adapter", "projections",
           "MergeError"]
