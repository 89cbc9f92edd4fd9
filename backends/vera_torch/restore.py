"""The compact residual that lets unmerge give W0 back bit for bit without a copy of it (issue 25).

Merge writes W = fl(W0 + Delta W) (spec 3.5; ``VeraLayer._write_merged``); unmerge forms
back = fl(W - Delta W) again (spec 3.6). Most elements come back exactly: back = W0. The rest
differ from W0 by a few units in the last place (ulps), and only where the merge lost
information, i.e. where more than one value x of the weight's dtype merges to the same W
(fl(x + Delta W) = W). Both sides can see where that is from W and Delta W alone, so no position
is stored for them:

- ``candidates``: the elements where a neighbour of back (one ulp up or down) also merges to W
  (the set S of such x is an interval of floats: a monotone rounding of a monotone sum; if it holds
  back and more, it holds a neighbour of back; if it holds back alone, back = W0). When only one
  neighbour does, W0 lies on that side of back ("one-sided"); when both do, on either ("two-sided").
- per candidate, k = W0 - back counted in ulps (the distance between the two values' places on
  the ordered line of floats, ``ordered``), as a code whose width follows the exponent gap d between
  W and back: the merge's rounding error is at most half an ulp of W, 2^(d-1) ulps of back, so
  |k| <= 2^m with m = max(d - 1, 0); a one-sided code holds 0..2^(m+1) - 1 ulps towards its side
  in m + 1 bits, a two-sided one -2^(m+1)..2^(m+1) - 1 in m + 2 bits (both capped at 8 bits). The
  codes follow one another bit by bit in one uint8 stream, in element order (each width is known).
- ``escapes``: every element the codes do not bring back (|k| beyond its code, a float16/bfloat16
  merge's double rounding (float32 sum, then the weight's dtype), a binade edge, an element that is
  not a candidate), as int32 index (int64 from 2^31 elements) and the original value.

The record is accepted only when ``decode`` gives W0 back bit for bit for every element; the
caller adds its checksums (``VeraLayer._keep_w0``). Typical cost (README "Merging"): 1 bit for an
element whose exponent the merge raised by one, a few bits more per further step, nothing where it
did not raise it (1 bit too at a tie). float32, float64, float16 and bfloat16 (tested) through the same
bit-level code; the ordered places are integers of the weight's width, and adding k modulo 2^bits
is exact. Elementwise IEEE operations only: the same bits on every machine for the same W and
Delta W (Delta W's own bits come from a matmul and are checked by the caller's checksums).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

_INT = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.int8}
MAX_WIDTH = 8  # bits of the widest code; a correction beyond it is an escape


class ResidualMismatch(ValueError):
    """``decode`` found other candidates than ``encode`` did: Delta W or W is not what was merged."""


@dataclass
class Residual:
    """What unmerge needs beyond W and Delta W: the packed codes, the escapes (index, value)."""

    counts: tuple[int, int]  # (candidates, bits of their codes): both found again at unmerge
    codes: torch.Tensor  # uint8, ceil(bits / 8): the candidates' codes in element order, low bit first
    idx: torch.Tensor  # (n_escapes,) int32 or int64, ascending
    values: torch.Tensor  # (n_escapes,) W0 at idx, the weight's dtype

    def tensors(self) -> list[torch.Tensor]:
        return [self.codes, self.idx, self.values]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    @property
    def escapes(self) -> int:
        return self.idx.numel()


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


def ordered(x: torch.Tensor) -> torch.Tensor:
    """The place of each value on the ordered line of floats (-0 just below +0, one step per ulp), as an
    integer of the value's width: sign-magnitude bit patterns made two's complement (negative patterns
    get their magnitude bits flipped: -m - 1). Its own inverse on integers (``from_ordered``)."""
    n = x.element_size() * 8
    b = x.view(_INT[x.element_size()])
    return b ^ ((b >> (n - 1)) & ((1 << (n - 1)) - 1))


def from_ordered(o: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of ``ordered``: values of ``dtype`` from their places."""
    n = o.element_size() * 8
    return (o ^ ((o >> (n - 1)) & ((1 << (n - 1)) - 1))).view(dtype)


def _classes(w: torch.Tensor, dW: torch.Tensor, back: torch.Tensor, ob: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per element (flat): the code width in bits (0: not a candidate, back is W0 or an escape) and the
    side (+1 / -1: only the neighbour above / below back also merges to W, so W0 is on that side;
    0: both do, the code is signed). Width from the exponent gap d between W and back (module doc)."""
    ib = _INT[w.element_size()]
    wb = w.reshape(-1).view(ib)
    up, down = (merge_op(from_ordered(ob + step, w.dtype).view(w.shape), dW, w.dtype).reshape(-1).view(ib) == wb
                for step in (1, -1))
    side = up.to(torch.int8) - down.to(torch.int8)
    nm, n = _nmant(w.dtype), torch.finfo(w.dtype).bits
    mask = (1 << (n - 1)) - 1

    def expo(t: torch.Tensor) -> torch.Tensor:
        return ((t.reshape(-1).view(ib) & mask) >> nm).clamp(min=1)

    m = (expo(w) - expo(back) - 1).clamp(min=0, max=MAX_WIDTH)  # |k| <= 2^m
    width = (m + 1 + (side == 0).to(m.dtype)).clamp(max=MAX_WIDTH).to(torch.int8)
    return torch.where(up | down, width, torch.zeros_like(width)), side


def _bit_places(width: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For the concatenated codes of these widths: each bit's code and its place in that code."""
    owner = torch.repeat_interleave(torch.arange(width.numel(), device=width.device), width)
    start = torch.cumsum(width, 0) - width
    return owner, torch.arange(owner.numel(), device=width.device) - start[owner]


def _pack(u: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """Codes u_i in [0, 2^width_i) -> uint8, one after the other, low bit first, bytes filled low bit first."""
    owner, place = _bit_places(width)
    bits = (u[owner] >> place) & 1
    bits = torch.cat([bits, bits.new_zeros((-bits.numel()) % 8)]).view(-1, 8)
    return (bits << torch.arange(8, device=u.device)).sum(1).to(torch.uint8)


def _unpack(p: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """Inverse of ``_pack``: the int64 codes of these widths."""
    owner, place = _bit_places(width)
    bits = ((p[:, None].long() >> torch.arange(8, device=p.device)) & 1).reshape(-1)[: owner.numel()]
    return torch.zeros(width.numel(), dtype=torch.int64, device=p.device).index_add_(0, owner, bits << place)


def _layout(w: torch.Tensor, dW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """What encoder and decoder both see: the places of back (flat), the candidates' positions in element
    order, their code widths and sides (int64)."""
    back = subtract(w, dW)
    ob = ordered(back.reshape(-1))
    width, side = _classes(w, dW, back, ob)
    del back
    pos = (width > 0).nonzero().view(-1)
    return ob, pos, width[pos].long(), side[pos].long()


def _rebuild(w: torch.Tensor, ob: torch.Tensor, pos: torch.Tensor, width: torch.Tensor, side: torch.Tensor,
             rec: Residual) -> torch.Tensor:
    """W0 from the layout and the residual: each candidate moved by its k, then the escapes."""
    u = _unpack(rec.codes, width)
    half = torch.ones_like(width) << (width - 1)
    k = torch.where(side == 0, torch.where(u >= half, u - 2 * half, u), u * side)
    out = ob.clone()
    out[pos] += k.to(out.dtype)  # modulo 2^bits: exact for any k
    out = from_ordered(out, w.dtype)
    out.index_copy_(0, rec.idx.long(), rec.values)
    return out.view(w.shape)


def encode(w: torch.Tensor, dW: torch.Tensor, w0: torch.Tensor) -> Residual | None:
    """The residual that brings ``w0`` back from merged ``w`` and ``dW``; None when it would not give
    every element of ``w0`` back bit for bit (not expected: the record is checked, element by element)."""
    ob, pos, width, side = _layout(w, dW)
    o0 = ordered(w0.reshape(-1))
    k = o0[pos].long() - ob[pos].long()  # ulps from back to W0 (float64 patterns: modulo 2^64, as decoding)
    half = torch.ones_like(width) << (width - 1)
    two = side == 0
    lo, hi = torch.where(two, -half, 0), torch.where(two, half - 1, 2 * half - 1)
    code = torch.where(two, k, k * side).clamp(lo, hi)  # out of range: an escape
    got = ob.clone()
    got[pos] += torch.where(two, code, code * side).to(got.dtype)
    idx = (got != o0).nonzero().view(-1)  # what the codes do not bring back
    del got, o0
    idx = idx.to(torch.int32) if w.numel() < 2**31 else idx
    rec = Residual((pos.numel(), int(width.sum())), _pack(code & (2 * half - 1), width), idx,
                   w0.reshape(-1).index_select(0, idx.long()))
    ib = _INT[w.element_size()]
    return rec if torch.equal(_rebuild(w, ob, pos, width, side, rec).view(ib), w0.view(ib)) else None


def decode(w: torch.Tensor, dW: torch.Tensor, rec: Residual) -> torch.Tensor:
    """W0 from merged ``w``, ``dW`` and the residual (a new tensor, ``w``'s shape and dtype).
    ``ResidualMismatch`` when the candidates are not those counted at merge time."""
    ob, pos, width, side = _layout(w, dW)
    counts = (pos.numel(), int(width.sum()))
    if counts != tuple(rec.counts) or rec.codes.numel() != -(-counts[1] // 8):
        raise ResidualMismatch(f"{counts[0]} candidates with {counts[1]} code bits at unmerge, "
                               f"{rec.counts[0]} with {rec.counts[1]} at merge")
    return _rebuild(w, ob, pos, width, side, rec)


def bound(code_bits: int, escapes: int, numel: int, element_size: int) -> int:
    """Bytes of a residual with this many code bits and escapes: ceil(bits / 8), plus index and value per
    escape (the encoding's own size, for tests and benches)."""
    return -(-code_bits // 8) + escapes * ((4 if numel < 2**31 else 8) + element_size)
