"""``vera-ref``: inspect, validate and make VeRA adapters and projections.

Every subcommand explains itself with --help. Exit status: 0 success, 1 a
rejected file or failed check (one line on stderr that names the field), 2 bad usage.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable

import numpy as np

from . import __version__
from .adapter import load_adapter, sha256_hex
from .errors import VeraError
from .metadata import DEFAULT_MAX_PROJECTION_ELEMENTS

def _setup_file(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a VeRA adapter file (.safetensors)")
    p.add_argument("--max-projection-elements", type=int, default=DEFAULT_MAX_PROJECTION_ELEMENTS, metavar="N",
                   help="refuse files whose projections would exceed N elements (default 2^28 = "
                        f"{DEFAULT_MAX_PROJECTION_ELEMENTS}); spec 4.6 rule 22")


def cmd_inspect(args) -> int:
    ad = load_adapter(args.file, max_projection_elements=args.max_projection_elements)
    cfg = ad.config
    from .container import read_metadata
    meta, entries = read_metadata(args.file)
    if args.json:
        print(json.dumps({"file": args.file, "bytes": os.path.getsize(args.file), "metadata": meta,
                          "tensors": {k: {"dtype": v[0], "shape": list(v[1]), "bytes": v[3] - v[2]}
                                      for k, v in sorted(entries.items())}}, indent=2))
        return 0
    print(f"{args.file}: VeRA adapter, spec {meta.get('vera_spec_version')}, {os.path.getsize(args.file)} bytes")
    seed = "" if cfg.seed is None else f", seed {cfg.seed}"
    print(f"  r {cfg.r}, generator {cfg.generator}{seed}, sharing {cfg.sharing}, n_in {cfg.n_in}, n_out {cfg.n_out}")
    print(f"  vectors {cfg.vector_dtype}, d_initial {cfg.d_initial:g}, dropout {cfg.dropout:g}")
    if cfg.base_model:
        print("  base model: " + ", ".join(f"{k} {v}" for k, v in sorted(cfg.base_model.items())))
    if cfg.provenance:
        print("  provenance: " + json.dumps(cfg.provenance, sort_keys=True))
    print(f"  modules ({len(cfg.modules)}):")
    width = max(len(m.name) for m in cfg.modules)
    for m in cfg.modules:
        print(f"    {m.name:<{width}}  in {m.in_features:>6}  out {m.out_features:>6}  {m.layout}")
    print(f"  tensors ({len(entries)}):")
    width = max(len(k) for k in entries)
    for k, (dtype, shape, b, e) in sorted(entries.items()):
        print(f"    {k:<{width}}  {dtype:<4}  {str(list(shape)):<14} {e - b:>10} bytes")
    print("  projection checksums (sha256 of float32 LE bytes, verified):")
    for c in cfg.projection_sha256:
        print(f"    group {c['group']}: A {c['A']}  B {c['B']}")
    return 0


def setup_inspect(p: argparse.ArgumentParser) -> None:
    _setup_file(p)
    p.add_argument("--json", action="store_true", help="print the header as JSON instead of a table")


def cmd_validate(args) -> int:
    ad = load_adapter(args.file, max_projection_elements=args.max_projection_elements)
    cfg = ad.config
    print(f"valid: {args.file} (r {cfg.r}, {len(cfg.modules)} modules, generator {cfg.generator}, "
          f"checksums verified)")
    return 0


def setup_validate(p: argparse.ArgumentParser) -> None:
    _setup_file(p)


def cmd_projection(args) -> int:
    from .peft_mt19937 import peft_projection
    from .projection import projection
    if args.generator == "peft-mt19937":
        if args.group:
            raise SystemExit("vera-ref projection: error: --group applies to philox4x32-10 only")
        A, B = peft_projection(args.seed, args.r, args.n_in, args.n_out)
    else:
        A, B = projection(args.seed, args.r, args.n_in, args.n_out, args.group)
    print(f"generator {args.generator}, seed {args.seed}, group {args.group}, r {args.r}, "
          f"n_in {args.n_in}, n_out {args.n_out}")
    print(f"A {tuple(A.shape)} float32 sha256 {sha256_hex(A)}")
    print(f"B {tuple(B.shape)} float32 sha256 {sha256_hex(B)}")
    if args.out:
        tmp = args.out + ".tmp.npz"
        np.savez(tmp, A=A, B=B)
        os.replace(tmp, args.out)
        print(f"wrote {args.out} (arrays A, B)")
    return 0


def setup_projection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, required=True, help="integer in [0, 2^64)")
    p.add_argument("--r", type=int, required=True, help="rank")
    p.add_argument("--n-in", type=int, required=True, help="columns of A (largest in_features)")
    p.add_argument("--n-out", type=int, required=True, help="rows of B (largest out_features)")
    p.add_argument("--group", type=int, default=0, help="projection group (0 = shared pair; spec 2.4)")
    p.add_argument("--generator", choices=("philox4x32-10", "peft-mt19937"), default="philox4x32-10")
    p.add_argument("--out", metavar="FILE.npz", help="also save A and B (written atomically)")


def cmd_vectors(args) -> int:
    from . import vectors
    return vectors.main(["--write"] if args.write else ["--check"])


def setup_vectors(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--check", action="store_true", help="compare with spec/vectors")
    g.add_argument("--write", action="store_true", help="rewrite spec/vectors")


def cmd_convert(args) -> int:
    from .adapter import save_adapter
    from .peft_interop import adapter_to_peft, peft_to_adapter
    if args.from_peft:
        dims = None
        if args.dims:
            with open(args.dims) as f:
                dims = {k: tuple(v) for k, v in json.load(f).items()}
        ad = peft_to_adapter(args.from_peft, dims=dims, in_features=args.in_features)
        save_adapter(ad, args.out)
        cfg = ad.config
        print(f"wrote {args.out}: {len(cfg.modules)} modules, r {cfg.r}, generator {cfg.generator}"
              + (f", seed {cfg.seed}" if cfg.seed is not None else "") + f", {os.path.getsize(args.out)} bytes")
    else:
        ad = load_adapter(args.to_peft, max_projection_elements=args.max_projection_elements)
        adapter_to_peft(ad, args.out)
        print(f"wrote {args.out}/adapter_config.json and adapter_model.safetensors "
              f"({'seed only' if ad.config.generator == 'peft-mt19937' else 'projections stored'})")
    return 0


def setup_convert(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--from-peft", metavar="DIR", help="a PEFT VeRA checkpoint directory (adapter_config.json + "
                                                      "adapter_model.safetensors) to convert into a spec file")
    g.add_argument("--to-peft", metavar="FILE", help="a spec adapter file to convert into a PEFT directory")
    p.add_argument("--out", required=True, help="the spec file (with --from-peft) or PEFT directory (--to-peft)")
    p.add_argument("--in-features", type=int, metavar="N",
                   help="in_features of every adapted module (PEFT does not record it)")
    p.add_argument("--dims", metavar="JSON", help='a JSON file {"module path": [in, out], ...} for modules of '
                                                  "different sizes")
    p.add_argument("--max-projection-elements", type=int, default=DEFAULT_MAX_PROJECTION_ELEMENTS, metavar="N",
                   help="with --to-peft: refuse files whose projections exceed N elements")


def cmd_conformance(args) -> int:
    from vera_conformance.runner import main_args
    return main_args(args)


def setup_conformance(p: argparse.ArgumentParser) -> None:
    from vera_conformance.runner import add_arguments
    add_arguments(p)


def cmd_conformance_vectors(args) -> int:
    from vera_conformance.vectors_runner import check_results, template
    if args.template:
        with open(args.template, "w") as f:
            json.dump(template(), f, indent=1)
        print(f"wrote {args.template}: fill in your results, then run --results")
        return 0
    with open(args.results) as f:
        results = json.load(f)
    rows = check_results(results)
    for tid, status, detail in rows:
        if status != "passed":
            print(f"{status.upper():8} {tid}  {detail}")
    n = {s: sum(r[1] == s for r in rows) for s in ("passed", "failed", "skipped")}
    print(f"{results.get('implementation') or 'implementation'}: {n['passed']} passed, {n['failed']} failed, "
          f"{n['skipped']} skipped")
    return 1 if n["failed"] else 0


def setup_conformance_vectors(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--template", metavar="FILE", help="write a results skeleton with every vector's tcId")
    g.add_argument("--results", metavar="FILE", help="check a filled-in results file")


def cmd_export_onnx(args) -> int:
    import importlib

    import torch
    from vera_onnx import export
    from vera_torch import VeraModel
    module, _, attr = args.model.partition(":")
    made = getattr(importlib.import_module(module), attr)()
    model, example = made[0], made[1]
    names = made[2] if len(made) > 2 else None
    vm = VeraModel.from_adapter(model, args.adapter, check_fingerprint=not args.no_fingerprint_check)
    export(vm, example, args.out, mode=args.mode, projections=args.projections, input_names=names,
           dtype=torch.float16 if args.float16 else None)
    print(f"wrote {args.out} ({args.mode}, {os.path.getsize(args.out)} bytes)")
    return 0


def setup_export_onnx(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="MODULE:FACTORY",
                   help="a function returning (base nn.Module, example args tuple[, input names])")
    p.add_argument("--adapter", required=True, help="the VeRA adapter file to export")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--mode", choices=("merged", "hotswap"), default="merged",
                   help="merged: adapter folded into the weights; hotswap: lambdas as overridable inputs")
    p.add_argument("--projections", choices=("initializers", "generator"), default="initializers",
                   help="hotswap only: A and B as initializers, or the generator graph and the seed")
    p.add_argument("--float16", action="store_true", help="export in float16")
    p.add_argument("--no-fingerprint-check", action="store_true", help="load even if the base weights differ")


def cmd_onnx_adapter(args) -> int:
    from vera_onnx import onnx_adapter
    mapping = onnx_adapter(args.file, args.model, args.out)
    print(f"wrote {args.out} ({len(mapping)} parameters; name mapping in {args.out}.json)")
    return 0


def setup_onnx_adapter(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a VeRA adapter file")
    p.add_argument("--model", required=True, help="the hot-swap .onnx model it is for (checked against it)")
    p.add_argument("--out", required=True, help="the .onnx_adapter file to write")


def cmd_showcase(args) -> int:
    from .showcase import run
    return run(args.out)


def setup_showcase(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="results/showcase", help="folder for the files it writes")


def cmd_demo(args) -> int:
    from vera_demo.run import run
    run(args)
    return 0


def setup_demo(p: argparse.ArgumentParser) -> None:
    try:
        from vera_demo.run import build_parser
    except ImportError:  # the demo package is not installed: the command explains itself when run
        return
    for action in build_parser()._actions:
        if action.dest != "help":
            p._add_action(action)


COMMANDS: list[tuple[str, str, str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = [
    ("inspect", "show an adapter's config, modules, tensors and checksums",
     "Read a VeRA adapter file, check it fully (spec 4.6) and print its config, modules, "
         "tensors with dtypes, shapes and bytes, and the verified projection checksums.",
     setup_inspect, cmd_inspect),
    ("validate", "check an adapter file against every rule of spec 4.6",
     "Exit 0 if FILE passes every rule of spec 4.6 (header, magic, version, document, size limit, "
         "tensors, values, checksums); otherwise exit 1 with one line naming the offending field. "
         "Sizes in the header are checked before anything is allocated.",
     setup_validate, cmd_validate),
    ("projection", "make the projection pair A, B from a seed and print their sha256",
     "Generate A (r x n_in) and B (n_out x r) with the spec's generator (spec 1, 2.1) or PEFT's "
         "(spec 2.5.3), print their shapes and sha256 (spec 2.6), optionally save them to an .npz file.",
     setup_projection, cmd_projection),
    ("vectors", "check (or rewrite) the test vectors in spec/vectors",
     "Regenerate every test vector of spec 6 from this reference and compare with spec/vectors "
         "(--check, exit 1 on any difference), or rewrite them (--write).",
     setup_vectors, cmd_vectors),
    ("convert", "convert between PEFT VeRA checkpoints and spec files",
     "Convert a PEFT VeRA checkpoint directory into a spec adapter file (--from-peft; NumPy only, no torch "
         "needed: seed-only checkpoints become generator peft-mt19937), or a spec file into PEFT's layout "
         "(--to-peft; projections stored unless the generator is peft-mt19937).",
     setup_convert, cmd_convert),
    ("conformance", "check an implementation against the spec, with hypothesis",
     "Run the conformance checks (generator, forward, backward, merge, unmerge, files) against the "
         "implementation named by --impl module:factory, per device and dtype, with the tolerances of "
         "spec 5.2; prints a repro for every failure and ends with 'N passed, N failed'.",
     setup_conformance, cmd_conformance),
    ("conformance-vectors", "check results of an implementation in any language against spec/vectors",
     "For implementations outside Python: write a results template (--template), fill it from your "
         "implementation, and check it (--results) against spec/vectors (spec 6).",
     setup_conformance_vectors, cmd_conformance_vectors),
    ("export-onnx", "export a model with a VeRA adapter to ONNX (merged or hot-swap)",
     "Load --adapter onto the model made by --model MODULE:FACTORY and export it: merged (the base "
         "model's operators only) or hot-swap (every lambda an overridable input, lambda_b = 0 by default; "
         "optionally the projection generator in the graph instead of A and B).",
     setup_export_onnx, cmd_export_onnx),
    ("onnx-adapter", "convert a VeRA file into an ONNX Runtime adapter for a hot-swap model",
     "Write FILE's vectors as an .onnx_adapter (onnxruntime.AdapterFormat) for the hot-swap model "
         "--model, after checking r, seed, modules and shapes against it; the name mapping goes beside it "
         "as <out>.json.",
     setup_onnx_adapter, cmd_onnx_adapter),
    ("demo", "the main job: finetune MiniLM with VeRA offline, compare with baselines, ship to ONNX Runtime",
     "Finetune all-MiniLM-L6-v2 with VeRA (query/value, r=256) plus a head on Rotten Tomatoes snippets "
         "(split by movie), compare with majority class, a logistic probe, head only and PEFT LoRA r=8 on the "
         "same split and budget, then save, reload bit-identically, merge, export to ONNX and serve two "
         "adapters from one ORT session. Writes results/ (table, JSON, training curve).",
     setup_demo, cmd_demo),
    ("showcase", "a one-second tour of the NumPy reference",
     "Generate a projection, train a toy VeRA layer with the reference backward, save, inspect, validate "
         "and reload the adapter, merge it, and see a tampered file rejected. NumPy only.",
     setup_showcase, cmd_showcase),
]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="vera-ref",
        description="Reference tools of the VeRA kit: adapter files (spec 4), projections (spec 1-2), "
                    "test vectors (spec 6).",
        epilog="Run 'vera-ref COMMAND --help' for a command's options.")
    ap.add_argument("--version", action="version", version=f"vera-ref {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_, description, setup, fn in COMMANDS:
        p = sub.add_parser(name, help=help_, description=description)
        setup(p)
        p.set_defaults(func=fn)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except VeraError as exc:  # a rejected input: one line, no traceback
        print(f"vera-ref {args.command}: {exc}", file=sys.stderr)
        return 1
    except ImportError as exc:
        print(f"vera-ref {args.command}: needs the optional package {exc.name!r} (pip install 'vera-ref[torch,onnx]')",
              file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"vera-ref {args.command}: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
