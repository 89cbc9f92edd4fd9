"""``.onnx_adapter`` files read once, bounded, and parsed from the bytes that are checked (issue 23, 10-11).

An ONNX Runtime adapter file (``onnxruntime.AdapterFormat``) is a FlatBuffer, file identifier
``TORT``: a root table ``Adapter {format_version: int; adapter_version: int; model_version:
int; parameters: [Parameter]}`` with ``Parameter {name: string; dims: [int64]; data_type:
int (ONNX TensorProto); raw_data: [ubyte]}``. ``read_bytes`` opens the path once and refuses
a file larger than the model can need before reading it (``size_bound``); ``parse`` walks every
offset of the buffer inside its bounds and returns the parameters, refusing a repeated name
and any byte after the data (a FlatBuffer builder ends at its last object; at most 7 zero
bytes of alignment follow). The session writes the checked bytes to a private file and has
ONNX Runtime load that one (``LoraAdapter.Load`` takes a path only): what it serves is what
was checked, whatever happens to the user's path meanwhile.
"""
from __future__ import annotations

import os
import stat

import numpy as np

from .errors import OnnxAdapterError

IDENTIFIER = b"TORT"
_DTYPES = {1: np.dtype("<f4"), 10: np.dtype("<f2"), 11: np.dtype("<f8")}  # ONNX TensorProto codes we serve
_HEADER = 64  # root offset, identifier, the Adapter table and its vtable, the parameter vector's length
_PER_PARAMETER = 96  # a Parameter table, its vtable, its offset, the length fields, alignment
_PADDING = 7  # alignment after the last object: the widest scalar (int64 dims) is 8 bytes


def size_bound(shapes: dict[str, tuple[np.dtype, tuple[int, ...]]]) -> int:
    """The largest adapter file ``shapes`` (``parameter_shapes``) can need: every parameter once, with its
    name, dims and data, plus the FlatBuffer's fixed overhead (generous: the exact size is smaller)."""
    total = _HEADER
    for name, (dt, shape) in shapes.items():
        total += (_PER_PARAMETER + len(name.encode()) + 8 * len(shape)
                  + np.dtype(dt).itemsize * int(np.prod(shape, dtype=np.int64)))
    return total


def read_bytes(path: str | os.PathLike, bound: int) -> bytes:
    """The whole file, opened once; ``OnnxAdapterError("file", ...)`` when it is not a regular file or
    holds more than ``bound`` bytes (checked before reading, and again while reading: it may grow)."""
    path = os.fspath(path)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below as not a regular file)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise OnnxAdapterError("file", f"{path} is not a regular file") from None
    except OSError as exc:
        raise OnnxAdapterError("file", f"{path} cannot be opened ({exc.strerror or type(exc).__name__})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OnnxAdapterError("file", f"{path} is not a regular file")
        if st.st_size > bound:
            raise OnnxAdapterError("file", f"{path} is {st.st_size} bytes; an adapter for this model is at most "
                                           f"{bound} bytes")
        chunks, got = [], 0
        while True:
            chunk = os.read(fd, min(1 << 20, bound + 1 - got))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
            if got > bound:
                raise OnnxAdapterError("file", f"{path} grew past {bound} bytes while being read; refused")
        return b"".join(chunks)
    finally:
        os.close(fd)


class _Buffer:
    """Bounds-checked little-endian reads of a FlatBuffer; ``end`` is the furthest byte any object uses."""

    def __init__(self, data: bytes) -> None:
        self.data, self.n, self.end = data, len(data), 8

    def _span(self, at: int, size: int) -> None:
        if at < 0 or size < 0 or at + size > self.n:
            raise ValueError(f"an offset points outside the file ({at}+{size} > {self.n} bytes)")
        self.end = max(self.end, at + size)

    def u16(self, at: int) -> int:
        self._span(at, 2)
        return int.from_bytes(self.data[at:at + 2], "little")

    def u32(self, at: int) -> int:
        self._span(at, 4)
        return int.from_bytes(self.data[at:at + 4], "little")

    def s32(self, at: int) -> int:
        self._span(at, 4)
        return int.from_bytes(self.data[at:at + 4], "little", signed=True)

    def table(self, at: int, fields: int) -> list[int | None]:
        """The absolute positions of a table's first ``fields`` fields (None: absent)."""
        vt = at - self.s32(at)
        vsize, tsize = self.u16(vt), self.u16(vt + 2)
        if vsize < 4 or vsize % 2:
            raise ValueError("a table's vtable is malformed")
        self._span(vt, vsize)
        self._span(at, max(tsize, 4))
        out = []
        for i in range(fields):
            off = self.u16(vt + 4 + 2 * i) if 4 + 2 * i < vsize else 0
            if off and off + 4 > tsize:  # every field of both tables is 4 bytes (int32 or offset)
                raise ValueError("a field lies outside its table")
            out.append(at + off if off else None)
        return out

    def vector(self, at: int, elem: int) -> tuple[int, int]:
        """(first element's position, length) of the vector the offset at ``at`` points to."""
        start = at + self.u32(at)
        length = self.u32(start)
        self._span(start + 4, length * elem)
        return start + 4, length


def parse(data: bytes, label: str = "the buffer") -> dict[str, np.ndarray]:
    """{name: array} of an ONNX Runtime adapter buffer, every offset checked; ``OnnxAdapterError("file", ...)``
    naming ``label`` (the path)
    for a malformed buffer, a parameter name given twice, a data type that is not float16/32/64, or
    bytes after the data."""
    buf = _Buffer(data)
    try:
        if data[4:8] != IDENTIFIER:
            raise ValueError(f"the file identifier is {bytes(data[4:8])!r}, not {IDENTIFIER!r}")
        root = buf.u32(0)
        fields = buf.table(root, 4)
        params: dict[str, np.ndarray] = {}
        if fields[3] is not None:
            first, count = buf.vector(fields[3], 4)
            for i in range(count):
                slot = first + 4 * i
                name_at, dims_at, type_at, raw_at = buf.table(slot + buf.u32(slot), 4)
                if name_at is None:
                    raise ValueError(f"parameter {i} has no name")
                s, n = buf.vector(name_at, 1)
                buf._span(s, n + 1)  # the string's terminating zero
                name = data[s:s + n].decode("utf-8")
                if name in params:
                    raise ValueError(f"parameter {name!r} is given twice")
                dims: list[int] = []
                if dims_at is not None:
                    d, nd = buf.vector(dims_at, 8)
                    dims = np.frombuffer(data, "<i8", nd, d).tolist()
                code = buf.s32(type_at) if type_at is not None else 0
                if code not in _DTYPES:
                    raise ValueError(f"parameter {name!r} has ONNX data type {code}, not float16, float32 or float64")
                dt = _DTYPES[code]
                if any(x < 0 for x in dims):
                    raise ValueError(f"parameter {name!r} has a negative dimension {dims}")
                r, nbytes = (buf.vector(raw_at, 1) if raw_at is not None else (0, 0))
                if nbytes != dt.itemsize * int(np.prod(dims, dtype=object)):
                    raise ValueError(f"parameter {name!r} holds {nbytes} bytes, not the {dims} {dt.name} its dims say")
                params[name] = np.frombuffer(data, dt, nbytes // dt.itemsize, r).reshape(dims).astype(dt.newbyteorder("="))
    except (ValueError, UnicodeDecodeError) as exc:
        raise OnnxAdapterError("file", f"{label} is not an ONNX Runtime adapter file ({exc})") from None
    tail = len(data) - buf.end
    if tail > _PADDING or any(data[buf.end:]):
        raise OnnxAdapterError("file", f"{label} has {tail} bytes after the adapter's data; refused")
    return params


__all__ = ["read_bytes", "parse", "size_bound", "IDENTIFIER"]
