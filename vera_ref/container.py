"""The safetensors container, read strictly and written atomically (spec 4.1, 4.6 steps 0-7, 4.7).

Layout (safetensors 0.4+): an 8-byte little-endian header length N, N bytes of
UTF-8 JSON (``{"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets"}}``),
then the tensor bytes, little-endian, C order, contiguous with no gap or overlap.

The reader refuses anything but a regular file without blocking (spec 4.6 step 0), checks the
header length against the limit and the real file size before reading it, bounds the JSON
text before parsing it (``vera_ref.jsontext``, spec 4.1.1), and checks every size in the
header against the file before it reads or allocates anything for the tensors. Written here
(not with the ``safetensors`` package) because NumPy has no bfloat16 and because the checks
must run before any allocation.
"""
from __future__ import annotations

import io
import json
import os
import stat
from dataclasses import dataclass
from typing import BinaryIO, Iterable, Iterator, Mapping

import numpy as np

from . import jsontext
from .atomic import atomic_write
from .dtypes import FROM_CODE, SAFETENSORS_CODE, bf16_bits, bf16_from_bits
from .rules import excerpt, fail

MAX_HEADER_BYTES = 100_000_000  # spec 4.1: safetensors' own limit (MAX_HEADER_SIZE = 100_000_000)
MAX_DIMS = 16  # spec 4.1
ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
_NP = {"F64": "<f8", "F32": "<f4", "F16": "<f2"}
_ONNX_NEXT_TAGS = {0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42}  # ModelProto fields 2-8 (spec 4.6 step 2)

Entry = tuple  # (dtype code, shape, begin, end)


@dataclass
class RawTensor:
    """A tensor as stored: dtype code, shape, and its values (float32 for BF16)."""

    dtype: str
    shape: tuple[int, ...]
    data: np.ndarray


def encode(array: np.ndarray, dtype: str) -> bytes:
    """Bytes of ``array`` stored as dtype code ``dtype`` (F64/F32/F16/BF16)."""
    if dtype == "BF16":
        return bf16_bits(np.asarray(array, dtype=np.float32)).astype("<u2").tobytes()
    return np.ascontiguousarray(array, dtype=_NP[dtype]).tobytes()


def decode(buf: bytes, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Values of a stored tensor given as bytes (a copy: tensor data need not be aligned, spec 4.1).
    The readers use ``read_tensor``, which reads a file's bytes straight into the array."""
    if dtype == "BF16":
        return bf16_from_bits(np.frombuffer(buf, dtype="<u2")).reshape(shape)
    return np.frombuffer(buf, dtype=_NP[dtype]).astype(_NP[dtype][1:]).reshape(shape)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _nbytes(shape: list[int], itemsize: int, limit: int) -> int | None:
    """The byte size of a tensor, or None when itemsize times the product of its non-zero
    dimensions exceeds ``limit`` (overflow-safe; zero-size tensors too, spec 4.1 Sizes)."""
    n = itemsize
    for d in shape:
        if d:
            n *= d
            if n > limit:
                return None
    if n > limit:  # spec 4.1 Sizes: the itemsize alone counts too (scalars, zero-size tensors)
        return None
    return 0 if 0 in shape else n


def _header_entry(name: str, entry: object, data_size: int) -> Entry:
    """spec 4.6 step 6, one entry."""
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        fail("E4.6.6.1", name)
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in ITEMSIZE:
        fail("E4.6.6.2", name, json=dtype)
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        fail("E4.6.6.3", name)
    if len(shape) > MAX_DIMS:
        fail("E4.6.6.4", name, n=len(shape))
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) and o >= 0 for o in offsets):
        fail("E4.6.6.5", name)
    begin, end = offsets
    nbytes = _nbytes(shape, ITEMSIZE[dtype], data_size)
    if nbytes is None:
        fail("E4.6.6.6", name, shape=excerpt(shape), d=dtype, n=data_size)
    if end - begin != nbytes:
        fail("E4.6.6.7", name, b=begin, e=end, shape=excerpt(shape), d=dtype, n=nbytes)
    if end > data_size:
        fail("E4.6.6.8", name, b=begin, e=end, n=data_size)
    return dtype, tuple(shape), begin, end


def _json(raw: bytes | str, rules: tuple[str, ...]) -> object:
    """jsontext.loads (rule 2 already applied to the bytes) with its verdicts mapped to the codes
    ``rules`` (count, syntax, depth, number, duplicate)."""
    try:
        return jsontext.loads(raw if isinstance(raw, str) else raw.decode("utf-8"), counted=True)
    except jsontext.JsonRuleError as exc:
        code = dict(zip(("count", "syntax", "depth", "number", "duplicate"), rules))[exc.rule]
        if exc.rule == "number":
            fail(code, literal=exc.value)
        if exc.rule == "duplicate":
            fail(code, json=exc.value)
        fail(code)


def looks_like_onnx(prefix: bytes) -> bool:
    """spec 4.6 step 2: field 1 (ir_version, a small varint) then another ModelProto field."""
    return len(prefix) >= 3 and prefix[0] == 0x08 and 1 <= prefix[1] <= 0x7F and prefix[2] in _ONNX_NEXT_TAGS


def read_header(f: BinaryIO, file_size: int) -> tuple[dict[str, str], dict[str, Entry], int]:
    """spec 4.6 steps 1-7: parse and check the header.

    Returns (metadata, {name: (dtype, shape, begin, end)} in ascending name order, data start).
    """
    if file_size < 8:
        fail("E4.6.1.1", n=file_size)
    prefix = f.read(8)
    n = int.from_bytes(prefix, "little")
    if n > min(MAX_HEADER_BYTES, file_size - 8):  # not a safetensors length: name the kind if we know it
        if looks_like_onnx(prefix):
            fail("E4.6.2.1")
        if prefix[:4] == b"PK\x03\x04":
            fail("E4.6.2.2")
    if n > MAX_HEADER_BYTES:
        fail("E4.6.2.3", N=n)
    if n > file_size - 8:
        fail("E4.6.3.1", N=n, size=file_size)
    # spec 4.1.1, steps 4.1-4.7: begins with '{', bounded (counted while reading, so a hostile
    # header is refused after its first megabytes), UTF-8, then the dialect's rules
    if n == 0:
        fail("E4.6.4.1")
    raw, pos, count = bytearray(min(n, 1 << 20)), 0, 0  # grown as the header arrives, not to N at once
    while pos < n:
        if len(raw) == pos:
            raw.extend(bytes(min(len(raw), n - len(raw))))  # doubles: a shrinking file costs what it holds
        view = memoryview(raw)[pos:pos + min(1 << 20, n - pos)]
        got = f.readinto(view)
        if not got:  # the file shrank while we read it
            fail("E4.6.3.1", N=n, size=8 + pos)
        if pos == 0 and raw[0] != 0x7B:  # '{'
            fail("E4.6.4.1")
        count += jsontext.structural_count(view[:got])
        view.release()  # raw may grow next
        if count > jsontext.MAX_STRUCTURAL:
            fail("E4.6.4.2")
        pos += got
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        fail("E4.6.4.3")
    del raw
    header = _json(text, ("E4.6.4.2", "E4.6.4.4", "E4.6.4.5", "E4.6.4.6", "E4.6.4.7"))
    del text
    assert isinstance(header, dict)  # it began with '{' and is valid JSON
    if "__metadata__" not in header:
        fail("E4.6.5.1")
    meta = header.pop("__metadata__")  # null is a value, not absence (spec 4.3): E4.6.5.2
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        fail("E4.6.5.2")
    data_size = file_size - 8 - n
    entries = {name: _header_entry(name, header[name], data_size) for name in sorted(header)}
    # spec 4.6 step 7: tensor data covers the data section exactly, without gap or overlap
    pos = 0
    for begin, end in sorted((e[2], e[3]) for e in entries.values()):
        if begin != pos:
            fail("E4.6.7.1", n=min(begin, pos))
        pos = end
    if pos != data_size:
        fail("E4.6.7.2", n=data_size - pos)
    return meta, entries, 8 + n


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """spec 4.6 step 0: open ``path`` for reading if it is a regular file, without ever blocking."""
    p = os.fspath(path)
    shown = os.fsdecode(p)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        fail("E4.6.0.1", path=shown)
    except OSError as exc:
        fail("E4.6.0.5", reason=exc.strerror or exc.__class__.__name__)
    if stat.S_ISDIR(st.st_mode):
        if os.path.isfile(os.path.join(p, "adapter_config.json")):
            fail("E4.6.0.2")
        fail("E4.6.0.3")
    if not stat.S_ISREG(st.st_mode):
        fail("E4.6.0.4")
    try:  # O_NONBLOCK: if the path was swapped for a FIFO since the stat, open still returns at once
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
                     | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        fail("E4.6.0.1", path=shown)
    except OSError as exc:
        fail("E4.6.0.5", reason=exc.strerror or exc.__class__.__name__)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        fail("E4.6.0.4")
    return os.fdopen(fd, "rb")


READ_CHUNK = 1 << 26  # bytes per read call: a tensor is read into its final array in steps of this size
_BF16_CHUNK = 1 << 16  # BF16 elements widened to float32 per step (a 128 KiB buffer)


def _readinto(f: BinaryIO, view: memoryview, name: str, begin: int, end: int) -> None:
    """Fill ``view`` (bytes) from ``f``; a short read means the file shrank while we read it."""
    pos = 0
    while pos < len(view):
        got = f.readinto(view[pos:pos + READ_CHUNK])
        if not got:
            fail("E4.6.6.8", name, b=begin, e=end, n=begin + pos)
        pos += got


def read_tensor(f: BinaryIO, start: int, name: str, entry: Entry) -> np.ndarray:
    """The values of one checked tensor entry, read once straight into the array returned.

    No intermediate copy: F64/F32/F16 bytes land in their final (aligned) array (spec 4.1:
    data need not be aligned in the file); BF16 bit patterns are widened to float32 a chunk at
    a time. Memory: the tensor's size (twice its stored size for BF16) plus a fixed buffer.
    """
    dtype, shape, begin, end = entry
    f.seek(start + begin)
    if dtype != "BF16":
        out = np.empty(shape, dtype=_NP[dtype])
        _readinto(f, memoryview(out.reshape(-1)).cast("B"), name, begin, end)
        if not out.dtype.isnative:  # a big-endian machine: swap in place
            out = out.byteswap(inplace=True).view(out.dtype.newbyteorder())
        return out
    out = np.empty(shape, dtype=np.float32)
    flat = out.reshape(-1)
    bits = np.empty(min(flat.size, _BF16_CHUNK), dtype="<u2")
    for i in range(0, flat.size, _BF16_CHUNK):
        k = min(_BF16_CHUNK, flat.size - i)
        _readinto(f, memoryview(bits[:k]).cast("B"), name, begin + 2 * i, end)
        flat[i:i + k] = bf16_from_bits(bits[:k])
    return out


def iter_tensors(f: BinaryIO, entries: Mapping[str, Entry], start: int,
                 names: Iterable[str] | None = None) -> Iterator[tuple[str, RawTensor]]:
    """Read the tensors ``names`` (default: all, in name order) one at a time, each once."""
    for name in (entries if names is None else names):
        entry = entries[name]
        yield name, RawTensor(entry[0], entry[1], read_tensor(f, start, name, entry))


def _read_tensors(f: BinaryIO, entries: Mapping[str, Entry], start: int) -> dict[str, RawTensor]:
    return dict(iter_tensors(f, entries, start))


def read(path: str | os.PathLike) -> tuple[dict[str, str], dict[str, RawTensor]]:
    """Read a whole safetensors file after checking it (spec 4.6 steps 0-7).

    For an adapter, ``vera_ref.adapter.load_adapter`` reads less: it applies every rule that
    needs no tensor bytes before it reads any (spec 4.1).
    """
    with open_regular(path) as f:
        meta, entries, start = read_header(f, os.fstat(f.fileno()).st_size)
        return meta, _read_tensors(f, entries, start)


def parse(payload: bytes) -> tuple[dict[str, str], dict[str, RawTensor]]:
    """``read`` for bytes in memory."""
    f = io.BytesIO(payload)
    meta, entries, start = read_header(f, len(payload))
    return meta, _read_tensors(f, entries, start)


def read_metadata(path: str | os.PathLike) -> tuple[dict[str, str], dict[str, Entry]]:
    """The checked header only; no tensor bytes are read."""
    with open_regular(path) as f:
        meta, entries, _ = read_header(f, os.fstat(f.fileno()).st_size)
    return meta, entries


def to_bytes(metadata: Mapping[str, str], tensors: Mapping[str, tuple[np.ndarray, str]]) -> bytes:
    """Serialise; tensors in name order, header padded with spaces to 8 bytes (as safetensors does)."""
    header: dict[str, object] = {"__metadata__": dict(metadata)}
    chunks, pos = [], 0
    for name in sorted(tensors):
        array, dtype = tensors[name]
        buf = encode(array, dtype)
        header[name] = {"dtype": dtype, "shape": list(np.shape(array)), "data_offsets": [pos, pos + len(buf)]}
        chunks.append(buf)
        pos += len(buf)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + b"".join(chunks)


def write_atomic(path: str | os.PathLike, payload_parts: list[bytes]) -> None:
    """spec 4.7: the parts, concatenated, replace ``path`` atomically (``vera_ref.atomic``)."""
    def write(f) -> None:
        for part in payload_parts:
            f.write(part)
    atomic_write(path, write)


def write(path: str | os.PathLike, metadata: Mapping[str, str], tensors: Mapping[str, tuple[np.ndarray, str]]) -> None:
    write_atomic(path, [to_bytes(metadata, tensors)])


__all__ = ["RawTensor", "read", "read_metadata", "read_header", "read_tensor", "iter_tensors", "parse",
           "open_regular", "looks_like_onnx",
           "write", "to_bytes", "write_atomic", "encode", "decode", "MAX_HEADER_BYTES", "MAX_DIMS",
           "SAFETENSORS_CODE", "FROM_CODE"]
