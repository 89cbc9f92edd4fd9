"""The safetensors container, read strictly and written atomically (spec 4.1, 4.7).

Layout (safetensors 0.4+): an 8-byte little-endian header length N, N bytes of
UTF-8 JSON (``{"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets"}}``),
then the tensor bytes, little-endian, C order, contiguous with no gap or overlap.

The reader checks every size in the header against the real file size before it
reads or allocates anything, so a hostile header cannot make it allocate more than
the file holds. Written here (not with the ``safetensors`` package) because NumPy
has no bfloat16 and because the checks must run before any allocation; the tests
read our files with ``safetensors`` and theirs with ours.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .dtypes import FROM_CODE, SAFETENSORS_CODE, bf16_bits, bf16_from_bits
from .atomic import atomic_write
from .errors import AdapterFileError

MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit (safetensors/src/tensor.rs MAX_HEADER_SIZE)
ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
_NP = {"F64": "<f8", "F32": "<f4", "F16": "<f2"}


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


def _decode(buf: bytes, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    if dtype == "BF16":
        return bf16_from_bits(np.frombuffer(buf, dtype="<u2")).reshape(shape)
    return np.frombuffer(buf, dtype=_NP[dtype]).astype(_NP[dtype][1:]).reshape(shape)


def _header_entry(name: str, entry: object, data_size: int) -> tuple[str, tuple[int, ...], int, int]:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise AdapterFileError(name, "header entry must have exactly dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in ITEMSIZE:
        raise AdapterFileError(name, f"dtype {dtype!r} is not allowed (F64, F32, F16, BF16)")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise AdapterFileError(name, "shape must be a list of non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)):
        raise AdapterFileError(name, "data_offsets must be two non-negative integers")
    begin, end = offsets
    nbytes = math.prod(shape) * ITEMSIZE[dtype]  # Python ints: no overflow
    if end - begin != nbytes:
        raise AdapterFileError(
            name, f"data_offsets [{begin}, {end}] do not match shape {shape} and dtype {dtype} ({nbytes} bytes)")
    if end > data_size:
        raise AdapterFileError(name, f"data_offsets [{begin}, {end}] run past the end of the data ({data_size} bytes)")
    return dtype, tuple(shape), begin, end


def read_header(f, file_size: int) -> tuple[dict[str, str], dict[str, tuple[str, tuple[int, ...], int, int]], int]:
    """Parse and check the header; returns (metadata, {name: (dtype, shape, begin, end)}, data start)."""
    if file_size < 8:
        raise AdapterFileError("header", f"file is {file_size} bytes, shorter than the 8-byte length prefix")
    n = int.from_bytes(f.read(8), "little")
    if n > MAX_HEADER_BYTES:
        raise AdapterFileError("header", f"length {n} exceeds the limit of {MAX_HEADER_BYTES} bytes")
    if n > file_size - 8:
        raise AdapterFileError("header", f"length {n} runs past the end of the file ({file_size} bytes)")
    raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise AdapterFileError("header", f"not valid UTF-8 JSON ({exc.__class__.__name__})") from None
    if not isinstance(header, dict):
        raise AdapterFileError("header", "not a JSON object")
    meta = header.pop("__metadata__", None)
    if meta is None:
        raise AdapterFileError("__metadata__", "missing")
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise AdapterFileError("__metadata__", "must map strings to strings")
    data_size = file_size - 8 - n
    entries = {name: _header_entry(name, e, data_size) for name, e in header.items()}
    # spec 4.1: tensor data covers the data section exactly, without gap or overlap
    pos = 0
    for name, (_, _, begin, end) in sorted(entries.items(), key=lambda kv: (kv[1][2], kv[1][3])):
        if begin != pos:
            raise AdapterFileError("header", f"tensor data is not contiguous (gap or overlap at byte {min(begin, pos)})")
        pos = end
    if pos != data_size:
        raise AdapterFileError("header", f"{data_size - pos} bytes after the last tensor")
    return meta, entries, 8 + n


def read(path: str | os.PathLike) -> tuple[dict[str, str], dict[str, RawTensor]]:
    """Read a whole safetensors file after checking its header (spec 4.1)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        meta, entries, start = read_header(f, size)
        tensors = {}
        for name, (dtype, shape, begin, end) in entries.items():
            f.seek(start + begin)
            tensors[name] = RawTensor(dtype, shape, _decode(f.read(end - begin), dtype, shape))
    return meta, tensors


def read_metadata(path: str | os.PathLike) -> tuple[dict[str, str], dict[str, tuple[str, tuple[int, ...], int, int]]]:
    """The checked header only; no tensor bytes are read."""
    with open(path, "rb") as f:
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


__all__ = ["RawTensor", "read", "read_metadata", "write", "to_bytes", "write_atomic",
           "MAX_HEADER_BYTES", "SAFETENSORS_CODE", "FROM_CODE"]
