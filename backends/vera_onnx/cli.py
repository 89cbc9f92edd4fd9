"""vera_onnx's ``vera-ref`` subcommands: ``export-onnx`` (needs torch) and ``onnx-adapter``
(onnx/onnxruntime only); entry points of the group ``vera_ref.commands`` (README "Command line")."""
from __future__ import annotations

import argparse
import os

from vera_ref.cli import Command, input_path, output_path
from vera_ref.resolve import UsageError, is_file_spec, resolve_object

# exit codes (README "Command line"): a --model/--adapter/--out that cannot be used as typed is a UsageError
# (exit 2, before any work); a factory that fails or returns something else, a file of another kind: an
# OnnxError (exit 1)


def _model_factory(spec: str):
    """--model MODULE:FACTORY or FILE.py:FACTORY -> (nn.Module, example args tuple or dict, input names or None)."""
    from torch import nn

    from .errors import ExportError
    factory = resolve_object(spec, "--model")
    if not callable(factory):
        raise UsageError(f"--model {spec}: {type(factory).__name__} is not callable; name a function returning "
                         "(model, example_args[, input_names])")
    try:
        made = factory()
    except Exception as exc:  # the user's factory failed: theirs to fix, one line, never "internal error"
        raise ExportError(f"--model {spec}: the factory raised {type(exc).__name__}: {str(exc)[:300]}") from None
    if isinstance(made, nn.Module):
        raise ExportError(f"--model {spec}: returned a bare {type(made).__name__}; return (model, example_args"
                          "[, input_names]) so the exporter has inputs to trace")
    if not isinstance(made, (tuple, list)) or len(made) not in (2, 3) or not isinstance(made[0], nn.Module):
        raise ExportError(f"--model {spec}: must return (nn.Module, example_args[, input_names]), got "
                          f"{type(made).__name__}")
    return made[0], made[1], (made[2] if len(made) == 3 else None)


def _run_export(args: argparse.Namespace) -> int:
    # the command line first, before torch is imported: a mistake costs no second
    if (args.capacity is None) == (args.mode == "multi"):
        raise UsageError("--capacity N is needed with --mode multi, and only there")
    if args.capacity is not None and args.capacity < 1:
        raise UsageError(f"--capacity must be >= 1, got {args.capacity}")
    input_path(args.adapter, "--adapter")
    output_path(args.out, "--out")
    module, colon, attr = args.model.rpartition(":")
    if not colon or not module or not attr:
        raise UsageError(f"--model must be MODULE:NAME (e.g. mymodule:make), got {args.model!r}")
    if is_file_spec(module):
        input_path(module if os.path.exists(module) or module.endswith(".py") else module + ".py", "--model")
    import torch
    from vera_torch import VeraModel

    from . import export
    model, example, names = _model_factory(args.model)
    vm = VeraModel.from_adapter(model, args.adapter, check_fingerprint=not args.no_fingerprint_check)
    export(vm, example, args.out, mode=args.mode, projections=args.projections, input_names=names,
           dtype=torch.float16 if args.float16 else None, capacity=args.capacity)
    print(f"wrote {args.out} ({args.mode}, {os.path.getsize(args.out)} bytes)")
    return 0


def _setup_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="MODULE:FACTORY",
                   help="a function returning (base nn.Module, example args tuple[, input names]), named as "
                        "module:factory (a module in the current folder is found) or path/to/file.py:factory")
    p.add_argument("--adapter", required=True, help="the VeRA adapter file to export")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--mode", choices=("merged", "hotswap", "multi"), default="merged",
                   help="merged: adapter folded into the weights; hotswap: lambdas as overridable inputs; multi: "
                        "tables of --capacity adapters and a per-row adapter index (mixed batches)")
    p.add_argument("--capacity", type=int, metavar="K", help="multi only: the number of adapter slots")
    p.add_argument("--projections", choices=("initializers", "generator"), default="initializers",
                   help="hotswap and multi: A and B as initializers, or the generator graph and the seed")
    p.add_argument("--float16", action="store_true", help="export in float16")
    p.add_argument("--no-fingerprint-check", action="store_true", help="load even if the base weights differ")


def check_onnx_model(path: str) -> None:
    """Refuse, in one line, a --model that is not there (UsageError, exit 2) or not an ONNX model (OnnxError,
    exit 1, naming what it is when we can tell)."""
    from .errors import OnnxError
    input_path(path, "--model")
    if os.path.isdir(path):
        raise OnnxError(f"--model {path}: is a folder, not an ONNX model file")
    if not os.path.isfile(path):
        raise OnnxError(f"--model {path}: is not a regular file (a FIFO, socket or device), not an ONNX model")
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise OnnxError(f"--model {path}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    if len(head) >= 9 and head[8:9] == b"{":  # safetensors: 8-byte length, then the JSON header
        raise OnnxError(f"--model {path}: this is a safetensors file (a VeRA or PEFT adapter?), not an ONNX model")
    import onnx
    try:
        onnx.load(path, load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning-derived or ValueError: all 'not ONNX'
        raise OnnxError(f"--model {path}: not an ONNX model ({type(exc).__name__})") from None


def _run_adapter(args: argparse.Namespace) -> int:
    from .serving import onnx_adapter
    input_path(args.file)
    output_path(args.out, "--out")
    check_onnx_model(args.model)
    mapping = onnx_adapter(args.file, args.model, args.out)
    print(f"wrote {args.out} ({len(mapping)} parameters; name mapping in {args.out}.json)")
    return 0


def _setup_adapter(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a VeRA adapter file")
    p.add_argument("--model", required=True, help="the hot-swap .onnx model it is for (checked against it)")
    p.add_argument("--out", required=True, help="the .onnx_adapter file to write")


EXPORT_ONNX = Command(
    "export-onnx", "export a model with a VeRA adapter to ONNX (merged or hot-swap)",
    "Load --adapter onto the model made by --model MODULE:FACTORY and export it: merged (the base "
    "model's operators only), hot-swap (every lambda an overridable input, lambda_b = 0 by default) or multi "
    "(tables of K adapters, one adapter per row of a batch); hot-swap and multi optionally carry the projection "
    "generator in the graph instead of A and B.",
    _setup_export, _run_export)

ONNX_ADAPTER = Command(
    "onnx-adapter", "convert a VeRA file into an ONNX Runtime adapter for a hot-swap model",
    "Write FILE's vectors as an .onnx_adapter (onnxruntime.AdapterFormat) for the hot-swap model "
    "--model, after checking r, seed, modules and shapes against it; the name mapping goes beside it "
    "as <out>.json.",
    _setup_adapter, _run_adapter)
