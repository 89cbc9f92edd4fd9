"""Memory bounds of the generator and the reader (issue 15 item 5), measured with tracemalloc.

NumPy reports its array allocations to tracemalloc, so the traced peak of one call is
deterministic (it does not depend on the machine's load): it is what the code allocates.

- ``vera_ref.projection``: the output pair plus a fixed set of block buffers (spec 1.4 lets any
  block be made alone), never temporaries that grow with r or n: peak <= 1.25 x output + 2 MiB;
- ``vera_ref.load_adapter``: the file's tensors read once, straight into their arrays (spec 4.1, no
  second copy), plus the projection a seeded file's checksums are verified against (spec 4.6 step
  26): peak <= 1 x file + 1.25 x projection + 4 MiB (a stored file: 1 x file + 1 MiB);
- a file whose projection exceeds ``max_projection_elements`` is refused before anything is
  generated (spec 4.6 step 22): peak < 1 MiB.
"""
import os
import tracemalloc

import numpy as np
import pytest

import vera_ref
from vera_ref import AdapterFileError, ModuleSpec, new_adapter, save_adapter

MiB = 1 << 20


def traced_peak(fn):
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        out = fn()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("r, n_in, n_out", [
    (256, 4096, 4096),   # the paper's r on a 4k model: 8 MiB of output
    (1024, 1024, 4096),  # high rank, B wider than A
    (3, 100_000, 7),     # r not a multiple of 4, one long row block
    (4096, 64, 64),      # r much larger than n
])
def test_projection_peak_is_its_output_plus_fixed_buffers(r, n_in, n_out):
    (A, B), peak = traced_peak(lambda: vera_ref.projection(5, r, n_in, n_out))
    out = A.nbytes + B.nbytes
    assert A.shape == (r, n_in) and B.shape == (n_out, r)
    assert out <= peak <= 1.25 * out + 2 * MiB, f"peak {peak / MiB:.2f} MiB for {out / MiB:.2f} MiB of output"


def test_projection_peak_does_not_grow_with_the_number_of_blocks():
    """Twice the features is twice the output; the buffers on top stay the same size."""
    from vera_ref.projection import BLOCK_ELEMS  # both sizes span whole blocks of features
    (A1, B1), p1 = traced_peak(lambda: vera_ref.projection(9, 64, 2 * BLOCK_ELEMS, 8))
    (A2, B2), p2 = traced_peak(lambda: vera_ref.projection(9, 64, 4 * BLOCK_ELEMS, 8))
    over1 = p1 - (A1.nbytes + B1.nbytes)
    over2 = p2 - (A2.nbytes + B2.nbytes)
    assert abs(over2 - over1) <= 256 * 1024, (over1, over2)


def _file(tmp_path, generator: str, r: int, n: int, modules: int):
    mods = [ModuleSpec(f"layer{i}.q", n, n) for i in range(modules)]
    stored = None
    if generator == "stored":
        stored = {0: vera_ref.projection(1, r, n, n)}
    ad = new_adapter(mods, r, seed=None if generator == "stored" else 1, generator=generator, stored=stored)
    for i, m in enumerate(mods):
        ad.lambda_b[m.name][:] = 0.25 + i
    path = tmp_path / f"{generator}.safetensors"
    save_adapter(ad, path)
    return path, ad


@pytest.mark.parametrize("generator", ["stored", "philox4x32-10"])
def test_reader_peak_is_bounded_by_the_file_and_its_projection(tmp_path, generator):
    r, n = 256, 4096
    path, ad = _file(tmp_path, generator, r, n, modules=8)
    size = os.path.getsize(path)
    proj = 4 * (r * n + n * r)  # A and B as float32
    back, peak = traced_peak(lambda: vera_ref.load_adapter(path))
    np.testing.assert_array_equal(back.lambda_b["layer7.q"], ad.lambda_b["layer7.q"])
    # issue 23: was 2 x file (read, then a decoded copy); a stored file generates nothing
    budget = size + (1 * MiB if generator == "stored" else 1.25 * proj + 4 * MiB)
    assert peak <= budget, f"peak {peak / MiB:.2f} MiB, file {size / MiB:.2f} MiB, projection {proj / MiB:.2f} MiB"
    if generator == "stored":  # the file holds the projection: reading it is at least the file
        assert peak >= size


def test_a_too_large_projection_is_refused_before_it_is_made(tmp_path):
    path, _ = _file(tmp_path, "philox4x32-10", 64, 4096, modules=1)  # 2 x 64 x 4096 = 524288 elements
    tracemalloc.start()
    try:
        with pytest.raises(AdapterFileError) as e:
            vera_ref.load_adapter(path, max_projection_elements=524287)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert e.value.code == "E4.6.22.1"
    assert peak < 1 * MiB, f"peak {peak / MiB:.2f} MiB before refusing"
    assert vera_ref.load_adapter(path, max_projection_elements=524288).config.r == 64  # the limit is inclusive
