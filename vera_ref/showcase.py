"""A short end-to-end tour of the reference (what ``vera-ref showcase`` runs).

Everything here is NumPy: a frozen toy layer, a VeRA adapter trained with the
reference backward (spec 3.4) to recover a known target, saved, inspected,
validated, reloaded bit-exactly, merged (spec 3.5), and a tampered copy rejected.
"""
from __future__ import annotations

import os
import tempfile
import time

import numpy as np

from .adapter import load_adapter, new_adapter, save_adapter, sha256_hex
from .atomic import atomic_write
from .describe import describe, validity
from .errors import AdapterFileError
from .layer import backward, forward, merge
from .projection import projection
from .tolerance import compare, constant, forward_magnitude


def _step(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(out_dir: str | None = None, steps: int = 300, seed: int = 42) -> int:
    """The tour; its files go to ``out_dir`` (created if needed) or, by default, to a new temporary
    folder, never the working folder."""
    if out_dir is None:
        out_dir = tempfile.mkdtemp(prefix="vera-showcase-")
    os.makedirs(out_dir, exist_ok=True)
    _step(f"files go to {out_dir}")
    rng = np.random.default_rng(0)
    n_in, n_out, r = 40, 48, 32
    _step(f"1/6 projection: seed {seed}, r {r}, n_in {n_in}, n_out {n_out} (spec 1-2)")
    A, B = projection(seed, r, n_in, n_out)
    print(f"      A {A.shape} sha256 {sha256_hex(A)[:16]}...  B {B.shape} sha256 {sha256_hex(B)[:16]}...")

    _step("2/6 train lambda_d, lambda_b of one frozen 48 x 40 layer to recover a known target")
    in_f, out_f = n_in, n_out
    W0 = rng.normal(size=(out_f, in_f)) / np.sqrt(in_f)
    bias = rng.normal(size=out_f) * 0.1
    true_d, true_b = rng.normal(size=r), rng.normal(size=out_f)
    X = rng.normal(size=(256, in_f))
    Y = forward(X, W0, bias, A, B, true_d, true_b)
    ad = new_adapter([("layer", in_f, out_f)], r=r, seed=seed, provenance={"made_by": "vera-ref showcase"})
    ld, lb = ad.lambda_d["layer"].astype(np.float64), ad.lambda_b["layer"].astype(np.float64)
    m = {k: np.zeros_like(v) for k, v in (("d", ld), ("b", lb))}
    v = {k: np.zeros_like(x) for k, x in m.items()}
    lr = 0.05
    for t in range(1, steps + 1):  # Adam on the mean squared error
        err = forward(X, W0, bias, A, B, ld, lb) - Y
        loss = float(np.mean(err**2))
        g = backward(X, W0, A, B, ld, lb, 2 * err / err.size)
        for k, grad, p in (("d", g.lambda_d, ld), ("b", g.lambda_b, lb)):
            m[k] = 0.9 * m[k] + 0.1 * grad
            v[k] = 0.999 * v[k] + 0.001 * grad**2
            p -= lr * (0.5 + 0.5 * np.cos(np.pi * t / steps)) * (m[k] / (1 - 0.9**t)) / (np.sqrt(v[k] / (1 - 0.999**t)) + 1e-12)
        if t == 1 or t % 50 == 0:
            print(f"      step {t:>4}/{steps}  loss {loss:.3e}", flush=True)
    ad.lambda_d["layer"], ad.lambda_b["layer"] = ld.astype(np.float32), lb.astype(np.float32)

    path = os.path.join(out_dir, "adapter.safetensors")
    _step(f"3/6 save {path} ({ad.config.r} + {out_f} trained floats; A and B are not stored)")
    save_adapter(ad, path)
    print(f"      {os.path.getsize(path)} bytes on disk; storing A and B too would add {(A.size + B.size) * 4} bytes")

    _step("4/6 inspect and validate it, then reload: predictions must be bit-identical")
    print(describe(path))
    print(validity(path))
    back = load_adapter(path)
    y_saved = forward(X, W0, bias, A, B, ad.lambda_d["layer"], ad.lambda_b["layer"])
    y_loaded = forward(X, W0, bias, *back.projection(), back.lambda_d["layer"], back.lambda_b["layer"])
    same = np.array_equal(y_saved, y_loaded)
    print(f"      reloaded predictions bit-identical: {same}")

    _step("5/6 merge into the base weight: x W^T + bias must equal the adapter forward (spec 3.5, 5.2)")
    Wm = merge(W0.astype(np.float32), A, B, back.lambda_d["layer"], back.lambda_b["layer"], dtype="float32")
    got = X.astype(np.float32) @ Wm.T + bias.astype(np.float32)
    ref = forward(X, W0, bias, A, B, back.lambda_d["layer"], back.lambda_b["layer"])
    # spec 5.2.3: the merged forward is the forward's nested sums (in, r) in another nesting order
    c = constant("forward", "float32", N=X.shape[0], in_features=in_f, out_features=out_f, r=r)
    chk = compare(got, ref, forward_magnitude(X, W0, bias, A, B, back.lambda_d["layer"], back.lambda_b["layer"]),
                  "float32", c)
    print(f"      merged float32 vs float64 reference: {'within' if chk.ok else 'OUTSIDE'} tolerance; {chk.describe()}")

    _step("6/6 tamper with a copy (one checksum digit): the reader must refuse it, naming the field")
    data = bytearray(open(path, "rb").read())
    needle = b'\\"A\\":\\"'  # the document is JSON text inside the JSON header: quotes are escaped
    i = data.index(needle) + len(needle)
    data[i] = ord("0") if data[i] != ord("0") else ord("1")
    bad = os.path.join(out_dir, "tampered.safetensors")
    atomic_write(bad, lambda f: f.write(bytes(data)))
    try:
        load_adapter(bad)
        print("      tampered file accepted: this is a bug")
        return 1
    except AdapterFileError as exc:
        print(f"      rejected: {exc}")
    ok = same and chk.ok
    _step("showcase " + ("passed" if ok else "FAILED") + f"; files in {out_dir}/")
    return 0 if ok else 1
