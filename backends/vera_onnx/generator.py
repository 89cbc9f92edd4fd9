"""The spec's generator as an ONNX graph (spec 1-2), for ONNX Runtime. Needs onnx and NumPy only.

Opset 18, uint64 arithmetic: Mul, Add, BitShift, BitwiseAnd, BitwiseXor, Cast, Range,
Concat, Reshape, Slice. Every input is a constant, so ONNX Runtime folds the whole
subgraph into A and B when the session starts: the model ships a seed instead of A and B.

Kernels: ONNX Runtime's CPU execution provider implements every op here for uint64
(checked by the tests). Execution providers without uint64 BitShift/Bitwise*/Mul kernels
(e.g. DirectML, CoreML, most NPU providers) fall back to the CPU provider for these
nodes, which is fine because they run once, at session start.
"""
from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from vera_ref import generators
from vera_ref.philox import M0, M1, ROUNDS, round_keys
from vera_ref.projection import MATRIX_A, MATRIX_B, check_arguments, kaiming_bound, key_of_seed

OPSET = 18
MASK32 = 0xFFFFFFFF


class _Builder:
    """Collects nodes and constant initializers under a name prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = itertools.count()
        self._consts: dict[tuple, str] = {}

    def name(self, hint: str) -> str:
        return f"{self.prefix}/{hint}_{next(self._n)}"

    def const(self, value, dtype) -> str:
        key = (np.dtype(dtype).str, np.asarray(value).tobytes(), np.shape(value))
        if key not in self._consts:
            n = self.name("c")
            self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), n))
            self._consts[key] = n
        return self._consts[key]

    def op(self, op_type: str, inputs: list[str], hint: str = "", out: str | None = None, **attrs) -> str:
        o = out or self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [o], name=self.name("n_" + op_type), **attrs))
        return o

    def u64(self, v: int) -> str:
        return self.const(np.uint64(v), np.uint64)


def _rounds(b: _Builder, c: list[str], keys: list[tuple[str, str]]) -> list[str]:
    """spec 1.2: ten rounds on four uint64 tensors holding 32-bit values."""
    m0, m1, mask, s32 = b.u64(M0), b.u64(M1), b.u64(MASK32), b.u64(32)
    c0, c1, c2, c3 = c
    for k0, k1 in keys:
        p0 = b.op("Mul", [c0, m0], "p0")
        p1 = b.op("Mul", [c2, m1], "p1")
        hi0 = b.op("BitShift", [p0, s32], "hi0", direction="RIGHT")
        hi1 = b.op("BitShift", [p1, s32], "hi1", direction="RIGHT")
        lo0 = b.op("BitwiseAnd", [p0, mask], "lo0")
        lo1 = b.op("BitwiseAnd", [p1, mask], "lo1")
        c0 = b.op("BitwiseXor", [b.op("BitwiseXor", [hi1, c1]), k0], "c0")
        c2 = b.op("BitwiseXor", [b.op("BitwiseXor", [hi0, c3]), k1], "c2")
        c1, c3 = lo1, lo0
    return [c0, c1, c2, c3]


def _values(b: _Builder, word: str, bound: np.float32) -> str:
    """spec 1.5: s = 2*(u >> 8) + 1 - 2^24 (exact in int64), float32(s) * float32(bound * 2^-24)."""
    m24 = b.op("BitShift", [word, b.u64(8)], "m24", direction="RIGHT")
    s = b.op("Sub", [b.op("Cast", [b.op("Mul", [m24, b.u64(2)])], to=TensorProto.INT64),
                     b.const(np.int64((1 << 24) - 1), np.int64)], "s")
    scale = np.float32(bound) * np.float32(2.0**-24)  # exact: power-of-two scaling
    return b.op("Mul", [b.op("Cast", [s], to=TensorProto.FLOAT), b.const(scale, np.float32)], "v")


def _range(b: _Builder, n: int, shape: list[int]) -> str:
    r = b.op("Range", [b.const(np.int64(0), np.int64), b.const(np.int64(n), np.int64), b.const(np.int64(1), np.int64)])
    return b.op("Reshape", [b.op("Cast", [r], to=TensorProto.UINT64), b.const(np.array(shape, np.int64), np.int64)])


def _table(b: _Builder, seed: int, m: int, g: int, n_count: int, r: int, bound: np.float32, rank_major: bool,
           out: str) -> None:
    """value(T[m, g][0:n_count, 0:r]) into ``out``: (r, n_count) if rank_major else (n_count, r)."""
    k0, k1 = key_of_seed(seed)
    keys = [(b.u64(a), b.u64(c)) for a, c in round_keys((k0, k1), ROUNDS)]
    n_kb = (r + 3) // 4
    if rank_major:  # words (n_kb, N): row kb, column n
        n, kb = _range(b, n_count, [1, n_count]), _range(b, n_kb, [n_kb, 1])
    else:  # words (N, n_kb)
        n, kb = _range(b, n_count, [n_count, 1]), _range(b, n_kb, [1, n_kb])
    words = _rounds(b, [n, kb, b.u64(m), b.u64(g)], keys)
    axis = 1 if rank_major else 2
    vals = [b.op("Unsqueeze", [_values(b, w, bound), b.const(np.array([axis], np.int64), np.int64)]) for w in words]
    stacked = b.op("Concat", vals, "stack", axis=axis)  # (n_kb, 4, N) or (N, n_kb, 4)
    if rank_major:
        flat = b.op("Reshape", [stacked, b.const(np.array([4 * n_kb, n_count], np.int64), np.int64)])
        b.op("Slice", [flat, b.const(np.array([0], np.int64), np.int64), b.const(np.array([r], np.int64), np.int64),
                       b.const(np.array([0], np.int64), np.int64)], out=out)
    else:
        flat = b.op("Reshape", [stacked, b.const(np.array([n_count, 4 * n_kb], np.int64), np.int64)])
        b.op("Slice", [flat, b.const(np.array([0], np.int64), np.int64), b.const(np.array([r], np.int64), np.int64),
                       b.const(np.array([1], np.int64), np.int64)], out=out)


def projection_nodes(seed: int, r: int, n_in: int, n_out: int, group: int, A_name: str, B_name: str,
                     prefix: str = "vera_generator") -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes and constants that compute A (r, n_in) and B (n_out, r) into the tensors named A_name, B_name;
    ``vera_ref.ProjectionError`` for arguments out of range (spec 1.3-1.4)."""
    check_arguments(seed, r, n_in, n_out, group)
    b = _Builder(prefix)
    _table(b, seed, MATRIX_A, group, n_in, r, kaiming_bound(n_in), True, A_name)
    _table(b, seed, MATRIX_B, group, n_out, r, kaiming_bound(r), False, B_name)
    return b.nodes, b.inits


# the spec's generator as ONNX nodes, found by exporters through the registry (spec 2.5)
generators.register_device(generators.PHILOX.name, "onnx", projection_nodes)


def projection_model(seed: int, r: int, n_in: int, n_out: int, group: int = 0) -> onnx.ModelProto:
    """A model with no inputs and outputs A and B: the generator alone."""
    nodes, inits = projection_nodes(seed, r, n_in, n_out, group, "A", "B")
    g = helper.make_graph(nodes, "vera_projection", [],
                          [helper.make_tensor_value_info("A", TensorProto.FLOAT, [r, n_in]),
                           helper.make_tensor_value_info("B", TensorProto.FLOAT, [n_out, r])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=9)


def philox_model() -> onnx.ModelProto:
    """counters uint32 (N, 4), key uint32 (2,) -> uint32 (N, 4): Philox4x32-10 (spec 1.1-1.2)."""
    b = _Builder("philox")
    c = b.op("Cast", ["counters"], to=TensorProto.UINT64)
    k = b.op("Cast", ["key"], to=TensorProto.UINT64)
    cols = [b.op("Slice", [c, b.const(np.array([i], np.int64), np.int64), b.const(np.array([i + 1], np.int64), np.int64),
                           b.const(np.array([1], np.int64), np.int64)]) for i in range(4)]
    mask = b.u64(MASK32)
    keys = []
    k0 = b.op("Slice", [k, b.const(np.array([0], np.int64), np.int64), b.const(np.array([1], np.int64), np.int64)])
    k1 = b.op("Slice", [k, b.const(np.array([1], np.int64), np.int64), b.const(np.array([2], np.int64), np.int64)])
    from vera_ref.philox import W0, W1
    for i in range(ROUNDS):  # (k + i*W) mod 2^32
        keys.append((b.op("BitwiseAnd", [b.op("Add", [k0, b.u64(i * W0)]), mask]),
                     b.op("BitwiseAnd", [b.op("Add", [k1, b.u64(i * W1)]), mask])))
    words = _rounds(b, cols, keys)
    b.op("Cast", [b.op("Concat", words, axis=1)], out="words", to=TensorProto.UINT32)
    g = helper.make_graph(b.nodes, "philox4x32_10",
                          [helper.make_tensor_value_info("counters", TensorProto.UINT32, ["N", 4]),
                           helper.make_tensor_value_info("key", TensorProto.UINT32, [2])],
                          [helper.make_tensor_value_info("words", TensorProto.UINT32, ["N", 4])], b.inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=9)
