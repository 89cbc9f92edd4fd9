"""The validation rules of spec 4.6: one stable code per rule, its field and its exact problem text.

``RULES`` lists them in the order a reader checks them (spec 4.6); ``fail(code, field, **values)``
raises the ``AdapterFileError`` of a rule. The table in spec/4-adapter-file.md is the same list
(a test compares the two), so readers in other languages can agree on ``(code, field)`` without
imitating Python's messages.

Values quoted from a file are cut to ``EXCERPT`` characters by ``excerpt`` (spec 4.6.1).
"""
from __future__ import annotations

import json
from typing import Any, NoReturn

from .errors import AdapterFileError

EXCERPT = 120  # spec 4.6.1: the longest quotation of file content in a message

# (code, field, problem template); ``{...}`` are filled in; field "{name}" means the tensor
# name, "{field}" the field named in the problem (see spec 4.6.2).
RULES: tuple[tuple[str, str, str], ...] = (
    # step 0: the path
    ("E4.6.0.1", "path", "no such file: {path}"),
    ("E4.6.0.2", "path", "is a directory holding a PEFT adapter (adapter_config.json): "
                         "use `vera-ref convert --from-peft`"),
    ("E4.6.0.3", "path", "is a directory, not a file"),
    ("E4.6.0.4", "path", "is not a regular file (a FIFO, socket or device)"),
    ("E4.6.0.5", "path", "cannot be read ({reason})"),
    # step 1-3: length prefix, other kinds of file, header length
    ("E4.6.1.1", "header", "file is {n} bytes, shorter than the 8-byte length prefix"),
    ("E4.6.2.1", "file", "this is an ONNX model, not a VeRA adapter"),
    ("E4.6.2.2", "file", "this is a zip archive (a PyTorch checkpoint?), not a VeRA adapter"),
    ("E4.6.2.3", "header", "length {N} exceeds the limit of 100000000 bytes"),
    ("E4.6.3.1", "header", "length {N} runs past the end of the file ({size} bytes)"),
    # step 4: the header's JSON text (spec 4.1.1)
    ("E4.6.4.1", "header", "must begin with '{{' (no byte-order mark or leading whitespace)"),
    ("E4.6.4.2", "header", "more than 1048576 of its bytes are '\"', ',', '[' or '{{'"),
    ("E4.6.4.3", "header", "not valid UTF-8"),
    ("E4.6.4.4", "header", "not valid JSON (RFC 8259)"),
    ("E4.6.4.5", "header", "nested deeper than 64 levels"),
    ("E4.6.4.6", "header", "number {literal} out of range"),
    ("E4.6.4.7", "header", "duplicate key {json}"),
    # step 5: __metadata__
    ("E4.6.5.1", "__metadata__", "missing"),
    ("E4.6.5.2", "__metadata__", "must map strings to strings"),
    # step 6: tensor entries, in ascending name order
    ("E4.6.6.1", "{name}", "header entry must have exactly dtype, shape and data_offsets"),
    ("E4.6.6.2", "{name}", "dtype {json} is not allowed (F64, F32, F16, BF16)"),
    ("E4.6.6.3", "{name}", "shape must be a list of non-negative integers"),
    ("E4.6.6.4", "{name}", "shape has {n} dimensions, more than 16"),
    ("E4.6.6.5", "{name}", "data_offsets must be two non-negative integers"),
    ("E4.6.6.6", "{name}", "shape {shape} and dtype {d} need more than the {n} bytes of the data section"),
    ("E4.6.6.7", "{name}", "data_offsets [{b}, {e}] do not match shape {shape} and dtype {d} ({n} bytes)"),
    ("E4.6.6.8", "{name}", "data_offsets [{b}, {e}] run past the end of the data ({n} bytes)"),
    # step 7: the data section
    ("E4.6.7.1", "header", "tensor data is not contiguous (gap or overlap at byte {n})"),
    ("E4.6.7.2", "header", "{n} bytes after the last tensor"),
    # step 8-9: magic, version
    ("E4.6.8.1", "vera_format", "this is a PEFT adapter: use `vera-ref convert --from-peft`"),
    ("E4.6.8.2", "vera_format", "missing: a plain safetensors file without VeRA metadata, not a VeRA adapter"),
    ("E4.6.8.3", "vera_format", "expected 'vera-adapter', got {json}"),
    ("E4.6.9.1", "vera_spec_version", "missing"),
    ("E4.6.9.2", "vera_spec_version", "unsupported version {json} (this reader supports 1.x)"),
    # step 10: the document's JSON text
    ("E4.6.10.1", "vera_config", "missing"),
    ("E4.6.10.2", "vera_config", "more than 1048576 of its characters are '\"', ',', '[' or '{{'"),
    ("E4.6.10.3", "vera_config", "not valid JSON (RFC 8259)"),
    ("E4.6.10.4", "vera_config", "nested deeper than 64 levels"),
    ("E4.6.10.5", "vera_config", "number {literal} out of range"),
    ("E4.6.10.6", "vera_config", "duplicate key {json}"),
    ("E4.6.10.7", "vera_config", "must be a JSON object"),
    # step 11: unknown fields
    ("E4.6.11.1", "{field}", "unknown field"),
    # step 12-21: the fields
    ("E4.6.12.1", "r", "missing"),
    ("E4.6.12.2", "r", "must be an integer >= 1, got {json}"),
    ("E4.6.13.1", "generator", "missing"),
    ("E4.6.13.2", "generator", "must be one of {allowed}, got {json}"),
    ("E4.6.14.1", "seed", "must be absent for the stored generator"),
    ("E4.6.14.2", "seed", "missing"),
    ("E4.6.14.3", "seed", "must be a decimal string in [0, 2^64), got {json}"),
    ("E4.6.15.1", "sharing", "missing"),
    ("E4.6.15.2", "sharing", "must be one of shared, per-module, got {json}"),
    ("E4.6.15.3", "sharing", "the {generator} generator supports only {allowed}"),
    ("E4.6.16.1", "module_prefix", "must be empty or dotted path parts each ending in '.', got {json}"),
    ("E4.6.16.2", "modules", "missing"),
    ("E4.6.16.3", "modules", "must be a non-empty list"),
    ("E4.6.16.4", "modules[{i}]", "must be [name, in_features, out_features] or "
                                  "[name, in_features, out_features, layout]"),
    ("E4.6.16.5", "modules[{i}]", "name must make a dotted module path, got {json}"),
    ("E4.6.16.6", "modules", "duplicate module {json}"),
    ("E4.6.16.7", "modules[{i}]", "in_features must be an integer >= 1, got {json}"),
    ("E4.6.16.8", "modules[{i}]", "out_features must be an integer >= 1, got {json}"),
    ("E4.6.16.9", "modules[{i}]", "layout must be one of linear, conv1d, got {json}"),
    ("E4.6.17.1", "n_in", "missing"),
    ("E4.6.17.2", "n_in", "must be an integer >= 1, got {json}"),
    ("E4.6.17.3", "n_out", "missing"),
    ("E4.6.17.4", "n_out", "must be an integer >= 1, got {json}"),
    ("E4.6.17.5", "n_in", "must equal the largest in_features of the modules ({n}), got {v}"),
    ("E4.6.17.6", "n_out", "must equal the largest out_features of the modules ({n}), got {v}"),
    ("E4.6.18.1", "vector_dtype", "missing"),
    ("E4.6.18.2", "vector_dtype", "must be one of float64, float32, float16, bfloat16, got {json}"),
    ("E4.6.18.3", "tensor_layout", "must be one of per-module, packed, got {json}"),
    ("E4.6.19.1", "d_initial", "must be a finite number, got {json}"),
    ("E4.6.19.2", "dropout", "must be a number in [0, 1), got {json}"),
    ("E4.6.20.1", "extra_tensors", "must be a list of tensor names"),
    ("E4.6.20.2", "extra_tensors", "lists a name twice"),
    ("E4.6.20.3", "base_model", "must map strings to strings"),
    ("E4.6.20.4", "base_model.{key}", "unknown field"),
    ("E4.6.20.5", "base_model.fingerprint", "must be 64 lowercase hex digits"),
    ("E4.6.20.6", "provenance", "must be a JSON object"),
    ("E4.6.21.1", "projection_sha256", "missing"),
    ("E4.6.21.2", "projection_sha256", "must list {{group, A, B}} for groups {groups} in order"),
    ("E4.6.21.3", "projection_sha256", "{k} of group {g} must be 64 lowercase hex digits"),
    # step 22: the size limit, before anything is generated
    ("E4.6.22.1", "projection", "{n} elements exceed the limit of {max} (raise max_projection_elements to allow it)"),
    # step 23-25: tensors against the document
    ("E4.6.23.1", "{name}", "extra tensor has the name of a VeRA tensor"),
    ("E4.6.23.2", "{name}", "missing"),
    ("E4.6.23.3", "{name}", "unexpected tensor (not a module vector, projection or listed extra tensor)"),
    ("E4.6.24.1", "{name}", "shape {shape} must be {expected}"),
    ("E4.6.24.2", "{name}", "dtype {d} differs from vector_dtype {dtype}"),
    ("E4.6.24.3", "{name}", "dtype {d} must be F32 for a stored projection"),
    ("E4.6.25.1", "{name}", "contains non-finite values (NaN or infinity)"),
    # step 26: checksums
    ("E4.6.26.1", "projection_sha256", "{k} of group {g} is {want}..., the {generator} generator gives {got}..."),
)
TEMPLATES = {code: problem for code, _, problem in RULES}
FIELDS = {code: fld for code, fld, _ in RULES}
CODES = tuple(code for code, _, _ in RULES)


def cut(text: str, limit: int = EXCERPT) -> str:
    """``text`` cut to ``limit`` characters, the cut marked by ``...`` (spec 4.6.1)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def excerpt(value: Any, limit: int = EXCERPT) -> str:
    """``value`` as compact-enough JSON text, cut to ``limit`` characters without encoding all of it."""
    out, n = [], 0
    try:
        for chunk in json.JSONEncoder(allow_nan=True).iterencode(value):
            out.append(chunk)
            n += len(chunk)
            if n > limit:
                break
    except (TypeError, ValueError, RecursionError):
        return cut(repr(value), limit)
    return cut("".join(out), limit)


def fail(code: str, field: str | None = None, **values: Any) -> NoReturn:
    """Raise the ``AdapterFileError`` of rule ``code``; ``field`` defaults to the rule's field.

    A ``json`` value is quoted as a JSON excerpt, other strings are cut (spec 4.6.1).
    """
    values = {k: excerpt(v) if k == "json" else cut(v) if isinstance(v, str) else v for k, v in values.items()}
    problem = TEMPLATES[code].format(**values)
    raise AdapterFileError(cut(field if field is not None else FIELDS[code]), problem, code=code)


__all__ = ["RULES", "CODES", "TEMPLATES", "FIELDS", "EXCERPT", "cut", "excerpt", "fail"]
