"""Adapter files read with this backend's generator (spec 4.6), and the projections of an adapter (spec 2.4-2.5).

``read_adapter`` applies every rule of spec 4.6 through ``vera_ref.load_adapter``; for the
``philox4x32-10`` generator the checksums of rule 26 are compared with the projections
*this backend* makes, so a JAX build whose generator disagrees refuses the file instead of
silently computing another model. Writing is ``vera_ref.save_adapter`` (atomic, spec 4.7).
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

import vera_ref
from vera_ref import Adapter, generators
from vera_ref.adapter import sha256_hex
from vera_ref.metadata import stored_keys
from vera_ref.rules import fail
from vera_ref.errors import AdapterFileError
from vera_ref.values import checked_values

from .philox import projection

GENERATED = "philox4x32-10"  # the generator this backend runs itself; the others come from vera_ref


def projections(ad: Adapter) -> dict[int, tuple[jax.Array, jax.Array]]:
    """group -> (A float32 (r, n_in_g), B float32 (n_out_g, r)) of every pair the adapter uses (spec 2.4)."""
    cfg = ad.config
    out = {}
    for g, n_in, n_out in cfg.groups():
        if cfg.generator == GENERATED:
            out[g] = projection(cfg.seed, cfg.r, n_in, n_out, g)
        elif not generators.get(cfg.generator).generates:  # stored (spec 2.5.2): present, shaped, finite
            ka, kb = stored_keys(g, cfg.sharing)
            pair = ad.stored.get(g)
            if pair is None:  # an in-memory Adapter may lack them; a file cannot (spec 4.6 step 23)
                raise AdapterFileError(ka, "missing")
            A = checked_values(ka, pair[0], (cfg.r, n_in), "float32")  # (r, n_in)
            B = checked_values(kb, pair[1], (n_out, cfg.r), "float32")  # (n_out, r)
            out[g] = (jnp.asarray(A), jnp.asarray(B))
        else:  # PEFT's stream (2.5.3): the reference's arrays
            A, B = ad.projection(g)
            out[g] = (jnp.asarray(A), jnp.asarray(B))
    return out


def read_adapter(path: str | os.PathLike, **kwargs) -> Adapter:
    """Read and check a VeRA file (spec 4.6), rule 26 with this backend's generator; raises
    ``vera_ref.AdapterFileError`` (``.field``, ``.code``) at the first broken rule. ``kwargs`` go to
    ``vera_ref.load_adapter`` (``max_projection_elements``)."""
    ad = vera_ref.load_adapter(path, verify_checksums=False, **kwargs)  # the file is read once
    recorded = {c["group"]: c for c in ad.config.projection_sha256}
    # spec 4.6 rule 26: this backend's generator for philox4x32-10, the reference's for the others
    made = projections(ad) if ad.config.generator == GENERATED else {
        g: ad.projection(g) for g, _, _ in ad.config.groups()}
    for g, (A, B) in made.items():
        for k, M in (("A", A), ("B", B)):
            got = sha256_hex(np.asarray(M))
            want = recorded[g][k]
            if got != want:  # spec 4.6 rule 26, the reference's code and text
                fail("E4.6.26.1", k=k, g=g, want=want[:16], generator=ad.config.generator, got=got[:16])
    return ad
