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
  codes of each width are packed bit by bit into uint8, in element order.
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
    """What unmerge needs beyond W and Delta W: packed codes per class, escapes (index, value)."""

    counts: tuple[int, ...]  # candidates with a code of 1, 2, ..., MAX_WIDTH bits
    codes: tuple[torch.Tensor, ...]  # per width: uint8, ceil(count * width / 8) bytes, in element order
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


def _pack(u: torch.Tensor, width: int) -> torch.Tensor:
    """Codes in [0, 2^width) -> uint8, ``width`` bits each, low bits first, bytes filled low bit first."""
    bits = torch.stack([(u >> j) & 1 for j in range(width)], dim=1).reshape(-1).to(torch.uint8)
    pad = (-bits.numel()) % 8
    if pad:
        bits = torch.cat([bits, bits.new_zeros(pad)])
    bits = bits.view(-1, 8)
    out = bits[:, 0].clone()
    for j in range(1, 8):
        out |= bits[:, j] << j
    return out


def _unpack(p: torch.Tensor, width: int, count: int, dtype: torch.dtype) -> torch.Tensor:
    bits = torch.stack([(p >> j) & 1 for j in range(8)], dim=1).reshape(-1)[: count * width].view(count, width)
    u = torch.zeros(count, dtype=dtype, device=p.device)
    for j in range(width):
        u |= bits[:, j].to(dtype) << j
    return u


def _code_range(width: int, side: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Smallest and largest k a code of ``width`` bits holds: [0, 2^w) ulps towards ``side``, or
    [-2^(w-1), 2^(w-1)) for a two-sided element."""
    two = side == 0
    lo = torch.where(two, -(1 << (width - 1)), 0)
    hi = torch.where(two, (1 << (width - 1)) - 1, (1 << width) - 1)
    return lo, hi


def _layout(w: torch.Tensor, dW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, ...]]:
    """(places of back, flat; the candidates' positions grouped by code width, element order within a
    width; their sides; the count per width 1..MAX_WIDTH): what encoder and decoder both see."""
    back = subtract(w, dW)
    ob = ordered(back.reshape(-1))
    width, side = _classes(w, dW, back, ob)
    del back
    cand = (width > 0).nonzero().view(-1)
    wc = width[cand]
    pos = cand[torch.sort(wc, stable=True).indices]
    counts = tuple(int(n) for n in torch.bincount(wc.long(), minlength=MAX_WIDTH + 1)[1:].tolist())
    return ob, pos, side[pos], counts


def _segments(counts: tuple[int, ...]):
    """(width, start, end) of each width's candidates in the grouped order of ``_layout``."""
    start = 0
    for wd, n in zip(range(1, MAX_WIDTH + 1), counts):
        yield wd, start, start + n
        start += n


def encode(w: torch.Tensor, dW: torch.Tensor, w0: torch.Tensor) -> Residual | None:
    """The residual that brings ``w0`` back from merged ``w`` and ``dW``; None when ``decode`` would
    not give every element of ``w0`` back bit for bit (not expected: the record is checked)."""
    ob, pos, side, counts = _layout(w, dW)
    o0 = ordered(w0.reshape(-1))
    k = o0[pos].long() - ob[pos].long()  # ulps from back to W0 (float64 patterns: modulo 2^64, as decoding)
    codes, ks = [], []
    for wd, a, b in _segments(counts):
        kc, sd = k[a:b], side[a:b].to(k.dtype)
        lo, hi = _code_range(wd, sd)
        code = torch.where(sd == 0, kc, kc * sd).clamp(lo, hi)  # out of range: an escape
        codes.append(_pack(code & ((1 << wd) - 1), wd))
        ks.append(torch.where(sd == 0, code, code * sd))
    got = ob.clone()
    got[pos] += torch.cat(ks).to(got.dtype)  # modulo 2^bits: exact for any k
    idx = (got != o0).nonzero().view(-1)  # what the codes do not bring back
    del got, o0, ob
    idx = idx.to(torch.int32) if w.numel() < 2**31 else idx
    rec = Residual(counts, tuple(codes), idx, w0.reshape(-1).index_select(0, idx.long()))
    try:
        same = torch.equal(decode(w, dW, rec).view(_INT[w.element_size()]), w0.view(_INT[w.element_size()]))
    except ResidualMismatch:
        same = False
    return rec if same else None


def decode(w: torch.Tensor, dW: torch.Tensor, rec: Residual) -> torch.Tensor:
    """W0 from merged ``w``, ``dW`` and the residual (a new tensor, ``w``'s shape and dtype).
    ``ResidualMismatch`` when the candidates are not those counted at merge time."""
    ob, pos, side, counts = _layout(w, dW)
    if counts != tuple(rec.counts) or len(rec.codes) != MAX_WIDTH:
        raise ResidualMismatch(f"{counts} candidates per code width at unmerge, {tuple(rec.counts)} at merge")
    ks = []
    for (wd, a, b), p in zip(_segments(counts), rec.codes):
        u, sd = _unpack(p, wd, b - a, torch.int64), side[a:b].long()
        ks.append(torch.where(sd == 0, torch.where(u >= 1 << (wd - 1), u - (1 << wd), u), u * sd))
    ob[pos] += torch.cat(ks).to(ob.dtype)
    out = from_ordered(ob, w.dtype)
    out.index_copy_(0, rec.idx.long(), rec.values)
    return out.view(w.shape)


def bound(counts: tuple[int, ...], escapes: int, numel: int, element_size: int) -> int:
    """Bytes of a residual with these counts: ceil(count * width / 8) per code width, plus index and value
    per escape (the encoding's own size, for tests and benches)."""
    codes = sum(-(-n * wd // 8) for n, wd in zip(counts, range(1, MAX_WIDTH + 1)))
    return codes + escapes * ((4 if numel < 2**31 else 8) + element_size)
