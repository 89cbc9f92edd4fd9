"""``vera-ref``: inspect, validate and make VeRA adapters and projections (README "Command line").

The core commands here need NumPy only. Other packages add their own subcommands
through the entry-point group ``vera_ref.commands`` (one entry point per command,
pointing at a ``Command``); a plugin is imported only when its command runs (or its
``--help`` is asked for). Every subcommand explains itself with --help.

Exit status: 0 success; 1 a rejected input or failed check (one line on stderr that
names what is wrong); 2 bad usage (one line); 3 an internal error (one line; set
VERA_DEBUG=1 for the traceback). Never a traceback for a user's mistake.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from importlib import metadata
from typing import Callable, NoReturn

import numpy as np

from . import __version__
from .adapter import load_adapter, sha256_hex
from .errors import VeraError
from .metadata import DEFAULT_MAX_PROJECTION_ELEMENTS
from .resolve import UsageError

ENTRY_POINT_GROUP = "vera_ref.commands"
OURS = {"vera_ref", "vera_torch", "vera_onnx", "vera_jax", "vera_conformance", "vera_demo"}
# which extra of the vera-ref distribution installs a missing optional package (pyproject.toml)
EXTRA_OF = {"torch": "torch", "safetensors": "torch", "onnx": "onnx", "onnxruntime": "onnx", "onnxscript": "onnx",
            "hypothesis": "conformance", "peft": "peft", "transformers": "peft", "tokenizers": "demo",
            "matplotlib": "demo", "tqdm": "demo", "jax": "jax", "jaxlib": "jax", "flax": "jax"}


@dataclass(frozen=True)
class Command:
    """One ``vera-ref`` subcommand. Packages publish theirs as entry points of the group
    ``vera_ref.commands`` (``name = "package.cli:OBJECT"``); ``setup`` adds the options to
    the subparser, ``run`` does the work and returns the exit status, raising a ``VeraError``
    (one line, exit 1) for a rejected input."""

    name: str
    help: str
    description: str
    setup: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]

def _setup_file(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a VeRA adapter file (.safetensors)")
    p.add_argument("--max-projection-elements", type=int, default=DEFAULT_MAX_PROJECTION_ELEMENTS, metavar="N",
                   help="refuse files whose projections would exceed N elements (default 2^28 = "
                        f"{DEFAULT_MAX_PROJECTION_ELEMENTS}); spec 4.6 rule 22")


def cmd_inspect(args) -> int:
    from .describe import describe, describe_json
    if args.json:
        print(json.dumps(describe_json(args.file, max_projection_elements=args.max_projection_elements), indent=2))
    else:
        print(describe(args.file, max_projection_elements=args.max_projection_elements))
    return 0


def setup_inspect(p: argparse.ArgumentParser) -> None:
    _setup_file(p)
    p.add_argument("--json", action="store_true", help="print the header as JSON instead of a table")


def cmd_validate(args) -> int:
    from .describe import validity
    print(validity(args.file, max_projection_elements=args.max_projection_elements))
    return 0


def setup_validate(p: argparse.ArgumentParser) -> None:
    _setup_file(p)


def cmd_projection(args) -> int:
    from . import generators
    gen = generators.get(args.generator)
    elements = args.r * (args.n_in + args.n_out)
    if elements > args.max_elements:
        raise UsageError(f"A and B would hold {elements:,} float32 elements ({elements * 4 / 2**30:.1f} GiB), more "
                         f"than --max-elements {args.max_elements:,}; raise it if this machine has the memory")
    A, B = gen.projection(args.seed, args.r, args.n_in, args.n_out, args.group)
    print(f"generator {args.generator}, seed {args.seed}, group {args.group}, r {args.r}, "
          f"n_in {args.n_in}, n_out {args.n_out}")
    print(f"A {tuple(A.shape)} float32 sha256 {sha256_hex(A)}")
    print(f"B {tuple(B.shape)} float32 sha256 {sha256_hex(B)}")
    if args.out:
        from .atomic import atomic_write
        atomic_write(args.out, lambda f: np.savez(f, A=A, B=B))
        print(f"wrote {args.out} (arrays A, B)")
    return 0


def setup_projection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, required=True, help="integer in [0, 2^64)")
    p.add_argument("--r", type=int, required=True, help="rank")
    p.add_argument("--n-in", type=int, required=True, help="columns of A (largest in_features)")
    p.add_argument("--n-out", type=int, required=True, help="rows of B (largest out_features)")
    p.add_argument("--group", type=int, default=0, help="projection group (0 = shared pair; spec 2.4)")
    from . import generators
    p.add_argument("--generator", choices=[n for n in generators.names() if generators.get(n).generates],
                   default=generators.DEFAULT)
    p.add_argument("--max-elements", type=int, default=DEFAULT_MAX_PROJECTION_ELEMENTS, metavar="N",
                   help="refuse projections of more than N elements before allocating them (default 2^28)")
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
            dims = _read_dims(args.dims)
        ad = peft_to_adapter(args.from_peft, dims=dims, in_features=args.in_features,
                             keep_projections=args.keep_projections)
        save_adapter(ad, args.out)
        cfg = ad.config
        print(f"wrote {args.out}: {len(cfg.modules)} modules, r {cfg.r}, generator {cfg.generator}"
              + (f", seed {cfg.seed}" if cfg.seed is not None else "") + f", {os.path.getsize(args.out)} bytes")
    else:
        ad = load_adapter(args.to_peft, max_projection_elements=args.max_projection_elements)
        adapter_to_peft(ad, args.out, keep_projections=args.keep_projections)
        seed_only = ad.config.generator == "peft-mt19937" and not args.keep_projections
        print(f"wrote {args.out}/adapter_config.json and adapter_model.safetensors "
              f"({'seed only' if seed_only else 'projections stored'})")
    return 0


def _read_dims(path: str) -> dict[str, tuple[int, int]]:
    """--dims: a JSON object {"module path": [in_features, out_features]}."""
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read(1 << 24))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"--dims {path}: not a JSON file ({type(exc).__name__})") from None
    ok = isinstance(doc, dict) and all(
        isinstance(v, list) and len(v) == 2 and all(isinstance(n, int) and not isinstance(n, bool) and n > 0
                                                    for n in v) for v in doc.values())
    if not ok or not doc:
        raise UsageError(f'--dims {path}: must be a JSON object {{"module path": [in_features, out_features], ...}}')
    return {k: (v[0], v[1]) for k, v in doc.items()}


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
    p.add_argument("--keep-projections", action="store_true",
                   help="with --from-peft: keep stored vera_A/vera_B in the file even when they are PEFT's own draws "
                        "(generator stored, not peft-mt19937); with --to-peft: write vera_A/vera_B "
                        "(save_projection=true) even for a peft-mt19937 file")
    p.add_argument("--max-projection-elements", type=int, default=DEFAULT_MAX_PROJECTION_ELEMENTS, metavar="N",
                   help="with --to-peft: refuse files whose projections exceed N elements")


def cmd_showcase(args) -> int:
    from .showcase import run
    return run(args.out)


def setup_showcase(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="results/showcase", help="folder for the files it writes")


CORE_COMMANDS: list[Command] = [
    Command("inspect", "show an adapter's config, modules, tensors and checksums",
            "Read a VeRA adapter file, check it fully (spec 4.6) and print its config, modules, "
            "tensors with dtypes, shapes and bytes, and the verified projection checksums.",
            setup_inspect, cmd_inspect),
    Command("validate", "check an adapter file against every rule of spec 4.6",
            "Exit 0 if FILE passes every rule of spec 4.6 (header, magic, version, document, size limit, "
            "tensors, values, checksums); otherwise exit 1 with one line naming the offending field. "
            "Sizes in the header are checked before anything is allocated.",
            setup_validate, cmd_validate),
    Command("projection", "make the projection pair A, B from a seed and print their sha256",
            "Generate A (r x n_in) and B (n_out x r) with the spec's generator (spec 1, 2.1) or PEFT's "
            "(spec 2.5.3), print their shapes and sha256 (spec 2.6), optionally save them to an .npz file.",
            setup_projection, cmd_projection),
    Command("vectors", "check (or rewrite) the test vectors in spec/vectors",
            "Regenerate every test vector of spec 6 from this reference and compare with the shipped "
            "spec/vectors (--check, exit 1 on any difference), or rewrite them (--write, in a checkout).",
            setup_vectors, cmd_vectors),
    Command("convert", "convert between PEFT VeRA checkpoints and spec files",
            "Convert a PEFT VeRA checkpoint directory into a spec adapter file (--from-peft; NumPy only, no torch "
            "needed: seed-only checkpoints become generator peft-mt19937), or a spec file into PEFT's layout "
            "(--to-peft; projections stored unless the generator is peft-mt19937). target_modules are written as "
            "the exact module paths and checked with PEFT's rule; nothing is converted that PEFT would compute "
            "differently.",
            setup_convert, cmd_convert),
    Command("showcase", "a one-second tour of the NumPy reference",
            "Generate a projection, train a toy VeRA layer with the reference backward, save, inspect, validate "
            "and reload the adapter, merge it, and see a tampered file rejected. NumPy only.",
            setup_showcase, cmd_showcase),
]


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors: ``vera-ref CMD: error: ...`` and exit 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see '{self.prog} --help')", file=sys.stderr)
        raise SystemExit(2)


def plugin_entry_points() -> dict[str, metadata.EntryPoint]:
    """The subcommands other packages publish (entry-point group ``vera_ref.commands``), by name."""
    eps = metadata.entry_points(group=ENTRY_POINT_GROUP)
    core = {c.name for c in CORE_COMMANDS}
    return {ep.name: ep for ep in sorted(eps, key=lambda e: e.name) if ep.name not in core}


def install_hint(exc: ImportError) -> str:
    top = (exc.name or "").partition(".")[0]
    extra = EXTRA_OF.get(top)
    where = f"pip install 'vera-ref[{extra}]'" if extra else f"pip install {top}"
    return f"needs the optional package {top!r} ({where})"


def load_plugin(ep: metadata.EntryPoint) -> Command:
    """Import one plugin command; a missing optional package becomes one line naming the extra."""
    try:
        cmd = ep.load()
    except ImportError as exc:
        if (exc.name or "").partition(".")[0] in OURS:
            raise  # our own module missing: a bug, reported as an internal error
        raise UsageError(f"the {ep.name} command {install_hint(exc)}") from None
    if not isinstance(cmd, Command):
        raise UsageError(f"entry point {ep.name} = {ep.value} is not a vera_ref.cli.Command")
    return cmd


def _add(sub, cmd: Command) -> None:
    p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.description)
    cmd.setup(p)
    p.set_defaults(func=cmd.run)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; the one plugin command named in ``argv`` (if any) is loaded, the others only listed."""
    ap = _Parser(
        prog="vera-ref",
        description="Reference tools of the VeRA kit: adapter files (spec 4), projections (spec 1-2), "
                    "test vectors (spec 6). Commands of other packages (conformance, ONNX, demo) appear "
                    "when those packages are installed.",
        epilog="Run 'vera-ref COMMAND --help' for a command's options.")
    ap.add_argument("--version", action="version", version=f"vera-ref {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    for cmd in CORE_COMMANDS:
        _add(sub, cmd)
    wanted = next((a for a in (argv or []) if not a.startswith("-")), None)
    for name, ep in plugin_entry_points().items():
        if name == wanted:
            _add(sub, load_plugin(ep))
        else:
            sub.add_parser(name, help=f"(from {ep.value.partition(':')[0].partition('.')[0]}; "
                                      f"'vera-ref {name} --help' for more)", add_help=False)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    name = next((a for a in argv if not a.startswith("-")), "vera-ref")
    try:
        args = build_parser(argv).parse_args(argv)
        return args.func(args)
    except UsageError as exc:  # a value on the command line that cannot be used
        print(f"vera-ref {name}: error: {exc}", file=sys.stderr)
        return 2
    except VeraError as exc:  # a rejected input: one line, no traceback
        print(f"vera-ref {name}: {exc}", file=sys.stderr)
        return 1
    except ImportError as exc:
        if (exc.name or "").partition(".")[0] in OURS:  # one of our own modules is missing: a bug, not a user's
            return _internal(name, exc)
        print(f"vera-ref {name}: {install_hint(exc)}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"vera-ref {name}: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1
    except MemoryError:
        print(f"vera-ref {name}: out of memory", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"vera-ref {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug of ours: still one line; the traceback on request
        return _internal(name, exc)


def _internal(name: str, exc: BaseException) -> int:
    if os.environ.get("VERA_DEBUG"):
        raise exc
    print(f"vera-ref {name}: internal error: {type(exc).__name__}: {str(exc)[:300]} "
          "(set VERA_DEBUG=1 for the traceback)", file=sys.stderr)
    return 3


if __name__ == "__main__":  # python -m vera_ref.cli: run the imported module, so plugins see one Command class
    from vera_ref.cli import main as _main
    sys.exit(_main())
