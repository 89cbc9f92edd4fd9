"""The compact residual that lets unmerge give W0 back bit for bit without a copy of it (issue 25).

Merge writes W = fl(W0 + Delta W) (spec 3.5; ``VeraLayer._write_merged``); unmerge forms
back = fl(W - Delta W) again (spec 3.6). Most elements come back exactly: back = W0. The rest
differ from W0 by a few units in the last place (ulps), and only where the merge lost
information, i.e. where more than one value x of the weight's dtype merges to the same W
(fl(x + Delta W) = W). Both sides can see where that is from W and Delta W alone, so no position
is stored for them:

- ``candidates``: the elements where a neighbour of back (one ulp up or down) also merges to W
  (the set of such x is an interval of floats: a monotone rounding of a monotone sum; if it holds
  back and more, it holds a neighbour of back; if it holds back alone, back = W0).
- per candidate, k = W0 - back counted in ulps (the distance between the two values' places on
  the ordered line of floats), stored as a signed 2-, 4- or 8-bit code packed into uint8; the
  width follows the exponent gap d between W and back, which bounds |k|: |k| <= 2^(d-1) + 1
  (the merge's rounding error is at most half an ulp of W, 2^(d-1) ulps of back, and the
  subtraction rounds once more), so d <= 1 takes 2 bits, d = 2, 3 take 4 bits, d >= 4 take 8.
- ``escapes``: every element the codes do not bring back (|k| beyond its code, a merge with a
  double rounding (float16/bfloat16: float32 sum, then the weight's dtype), an element that is not
  a candidate), as int32 index (int64 from 2^31 elements) and the original value.

The record is accepted only when ``decode`` gives W0 back bit for bit for every element; the
caller adds its checksums (``VeraLayer._keep_w0``). Cost per element of a float32 weight: about
2 bits for each element whose exponent the merge raised by one, 4 or 8 bits where it raised it
more, nothing elsewhere (README "Merging"). Any floating dtype: float32, float64, float16,
bfloat16 (and float8), all through the same bit-level code.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

_INT = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.int8}
WIDTHS = (2, 4, 8)  # code bits of the three candidate classes (exponent gap d <= 1, d in 2..3, d >= 4)


class ResidualMismatch(ValueError):
    """``decode`` found other candidates than ``encode`` did: Delta W or W is not what was merged."""


@dataclass
class Residual:
    """What unmerge needs beyond W and Delta W: packed codes per class, escapes (index, value)."""

    counts: tuple[int, int, int]  # candidates per class, in element order
    codes: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # uint8, ceil(count * width / 8) bytes each
    idx: torch.Tensor  # (n_escapes,) int32 or int64, ascending
    values: torch.Tensor  # (n_escapes,) W0 at idx, the weight's dtype

    def tensors(self) -> list[torch.Tensor]:
        return [*self.codes, self.idx, self.values]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    @property
    def escapes(self) -> int:
        return self.idx.numel()

    def to(self, device: torch.device | str) -> Residual:
        return Residual(self.counts, tuple(c.to(device) for c in self.codes), self.idx.to(device),
                        self.values.to(device))


def subtract(w: torch.Tensor, dW: torch.Tensor) -> torch.Tensor:
    """back = fl(W - Delta W) in W's dtype, Delta W float32 or wider (spec 3.6): what unmerge forms."""
    return (w.to(dW.dtype) - dW).to(w.dtype)


def merge_op(x: torch.Tensor, dW: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """fl(x + Delta W) in ``dtype`` with the operations of ``VeraLayer._write_merged`` (spec 3.5)."""
    if dtype == dW.dtype:
        return torch.add(x, dW)
    return (dW + x).to(dtype)


def _nmant(dtype: torch.dtype) -> int:
    return round(-torch.log2(torch.tensor(torch.finfo(dtype).eps, dtype=torch.float64)).item())


def _wide(dtype: torch.dtype) -> torch.dtype:
    """Integer dtype wide enough for differences of ordered bit patterns (float64: wraps, see ordered)."""
    return torch.int64 if torch.finfo(dtype).bits >= 32 else torch.int32


def ordered(x: torch.Tensor) -> torch.Tensor:
    """The place of each value on the ordered line of floats (-0 just below +0, one step per ulp),
    as a wide integer: sign-magnitude bit patterns made two's complement."""
    n = x.element_size() * 8
    b = x.view(_INT[x.element_size()]).to(_wide(x.dtype))
    mag = b & ((1 << (n - 1)) - 1)
    return torch.where(b < 0, -mag - 1, b)


def from_ordered(o: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of ``ordered``: values of ``dtype`` from their places."""
    n = torch.finfo(dtype).bits
    sign = -(1 << (n - 1))  # the sign bit as a negative number of the narrow integer type
    b = torch.where(o < 0, (-(o + 1)) | sign, o)
    return b.to(_INT[n // 8]).view(dtype)


def _classes(w: torch.Tensor, dW: torch.Tensor, back: torch.Tensor, ob: torch.Tensor) -> torch.Tensor:
    """Per element (flat): -1 when back is the only neighbour-checked value merging to W, else the
    code class 0, 1, 2 from the exponent gap d between W and back (module doc)."""
    ib = _INT[w.element_size()]
    wb = w.reshape(-1).view(ib)
    amb = torch.zeros(w.numel(), dtype=torch.bool, device=w.device)
    for step in (1, -1):
        x = from_ordered(ob + step, w.dtype).view(w.shape)
        amb |= merge_op(x, dW, w.dtype).reshape(-1).view(ib) == wb
    nm, n = _nmant(w.dtype), torch.finfo(w.dtype).bits
    mask = (1 << (n - 1)) - 1

    def expo(t: torch.Tensor) -> torch.Tensor:
        return ((t.reshape(-1).view(ib).to(_wide(w.dtype)) & mask) >> nm).clamp(min=1)

    d = expo(w) - expo(back)
    cls = (d >= 2).to(torch.int8) + (d >= 4).to(torch.int8)
    return torch.where(amb, cls, torch.full_like(cls, -1))


def _pack(k: torch.Tensor, width: int) -> torch.Tensor:
    """Signed codes in [-2^(width-1), 2^(width-1)) -> uint8, 8 / width codes a byte, low bits first."""
    per = 8 // width
    u = (k & ((1 << width) - 1)).to(torch.uint8)
    pad = (-u.numel()) % per
    if pad:
        u = torch.cat([u, u.new_zeros(pad)])
    u = u.view(-1, per)
    out = u[:, 0].clone()
    for j in range(1, per):
        out |= u[:, j] << (width * j)
    return out


def _unpack(p: torch.Tensor, width: int, count: int, dtype: torch.dtype) -> torch.Tensor:
    per, m = 8 // width, (1 << width) - 1
    u = torch.stack([(p >> (width * j)) & m for j in range(per)], dim=1).reshape(-1)[:count].to(dtype)
    return torch.where(u >= 1 << (width - 1), u - (1 << width), u)


def _apply_codes(ob: torch.Tensor, cls: torch.Tensor, ks: list[torch.Tensor]) -> torch.Tensor:
    out = ob.clone()
    for c, k in enumerate(ks):
        sel = cls == c
        out[sel] += k
    return out


def encode(w: torch.Tensor, dW: torch.Tensor, w0: torch.Tensor) -> Residual | None:
    """The residual that brings ``w0`` back from merged ``w`` and ``dW``; None when ``decode`` would
    not give every element of ``w0`` back bit for bit (not expected: the record is checked)."""
    back = subtract(w, dW)
    ob = ordered(back.reshape(-1))
    o0 = ordered(w0.reshape(-1))
    cls = _classes(w, dW, back, ob)
    del back
    k = o0 - ob  # ulps from back to W0 (float64 patterns: wraps, and decoding wraps back)
    ks, codes = [], []
    for c, width in enumerate(WIDTHS):
        lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
        kc = k[cls == c].clamp(lo, hi)
        ks.append(kc)
        codes.append(_pack(kc, width))
    del k
    got = _apply_codes(ob, cls, ks)
    idx = (got != o0).nonzero().view(-1)  # what the codes do not bring back
    idx = idx.to(torch.int32) if w.numel() < 2**31 else idx
    rec = Residual(tuple(kc.numel() for kc in ks), tuple(codes), idx,
                   w0.reshape(-1).index_select(0, idx.long()))
    try:
        same = torch.equal(decode(w, dW, rec).view(_INT[w.element_size()]), w0.view(_INT[w.element_size()]))
    except ResidualMismatch:
        same = False
    return rec if same else None


def decode(w: torch.Tensor, dW: torch.Tensor, rec: Residual) -> torch.Tensor:
    """W0 from merged ``w``, ``dW`` and the residual (a new tensor, ``w``'s shape and dtype).
    ``ResidualMismatch`` when the candidates are not those counted at merge time."""
    back = subtract(w, dW)
    ob = ordered(back.reshape(-1))
    cls = _classes(w, dW, back, ob)
    del back
    counts = tuple(int((cls == c).sum()) for c in range(len(WIDTHS)))
    if counts != tuple(rec.counts):
        raise ResidualMismatch(f"{counts} candidates per class at unmerge, {tuple(rec.counts)} at merge")
    ks = [_unpack(p, width, n, ob.dtype) for p, width, n in zip(rec.codes, WIDTHS, rec.counts)]
    out = from_ordered(_apply_codes(ob, cls, ks), w.dtype)
    out.index_copy_(0, rec.idx.long(), rec.values)
    return out.view(w.shape)


def bound(counts: tuple[int, int, int], escapes: int, numel: int, element_size: int) -> int:
    """Bytes of a residual with these counts: ceil(count * width / 8) per class, plus index and value
    per escape (the encoding's own size, for tests and benches)."""
    codes = sum(-(-n * width // 8) for n, width in zip(counts, WIDTHS))
    return codes + escapes * ((4 if numel < 2**31 else 8) + element_size)
