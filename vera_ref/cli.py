"""``vera-ref``: inspect, validate and make VeRA adapters and projections (README "Command line").

The core commands here need NumPy only. Other packages add their own subcommands
through the entry-point group ``vera_ref.commands`` (one entry point per command,
pointing at a ``Command``); a plugin is imported only when its command runs (or its
``--help`` is asked for). Every subcommand explains itself with --help.

Exit status (README "Command line", the table): 0 success; 1 an input that was read and
refused, or a check that failed; 2 a command line that cannot be used as typed (unknown
option, bad value, a path that does not exist, a MODULE:NAME that does not import) or a
command whose optional packages are not installed: nothing was read or run; 3 an internal
error (set VERA_DEBUG=1 for the traceback); 130 interrupted. Always one line on stderr,
never a traceback, and output is valid UTF-8 whatever the file held (unencodable
characters are written as backslash escapes).
"""
from __future__ import annotations

import argparse
import errno
import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from importlib import metadata
from typing import Callable, NoReturn

import numpy as np

from . import __version__
from .adapter import load_adapter, sha256_hex
from .errors import AdapterFileError, VeraError
from .metadata import DEFAULT_MAX_PROJECTION_ELEMENTS
from .resolve import UsageError

ENTRY_POINT_GROUP = "vera_ref.commands"
OURS = {"vera_ref", "vera_torch", "vera_onnx", "vera_jax", "vera_conformance", "vera_demo"}
# which extra of the vera-ref distribution installs a missing optional package (pyproject.toml)
EXTRA_OF = {"torch": "torch", "safetensors": "torch", "onnx": "onnx", "onnxruntime": "onnx", "onnxscript": "onnx",
            "hypothesis": "conformance", "peft": "peft", "transformers": "peft", "tokenizers": "demo",
            "matplotlib": "demo", "tqdm": "demo", "jax": "jax", "jaxlib": "jax", "flax": "jax"}
EXTRAS_ORDER = ("torch", "onnx", "peft", "conformance", "jax", "demo")  # as in pyproject.toml
# the packages each plugin command of this distribution needs (pyproject.toml), looked up with find_spec
# before the plugin is imported: `--help` lists only what can run here, and one line names every extra missing
PLUGIN_NEEDS = {
    "conformance": ("hypothesis",),
    "conformance-vectors": ("hypothesis",),
    "export-onnx": ("torch", "onnx", "onnxruntime"),
    "onnx-adapter": ("onnx", "onnxruntime"),
    "demo": ("torch", "safetensors", "onnx", "onnxruntime", "peft", "transformers", "tokenizers", "matplotlib",
             "tqdm"),
}


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

def input_path(path: str, option: str = "") -> str:
    """A path named on the command line that must be there (exit 2 if it is not; what it holds is for its
    reader to judge, exit 1)."""
    if not os.path.lexists(path):
        raise UsageError(f"{option + ' ' if option else ''}{path}: no such file or folder")
    return path


def output_path(path: str, option: str, *, folder: bool = False) -> str:
    """A file (or, with ``folder``, a folder) to write: the folder it goes in must exist, and it must not be
    a folder where a file goes or a file where a folder goes (exit 2, before any work)."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(f"{option} {path}: the folder {parent} does not exist")
    if not folder and os.path.isdir(path):
        raise UsageError(f"{option} {path}: is a folder; name the file to write")
    if folder and os.path.lexists(path) and not os.path.isdir(path):
        raise UsageError(f"{option} {path}: is a file; name a folder")
    return path


def _setup_file(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a VeRA adapter file (.safetensors)")
    p.add_argument("--max-projection-elements", type=int, default=DEFAULT_MAX_PROJECTION_ELEMENTS, metavar="N",
                   help="refuse files whose projections would exceed N elements (default 2^28 = "
                        f"{DEFAULT_MAX_PROJECTION_ELEMENTS}); spec 4.6 rule 22")


def cmd_inspect(args) -> int:
    from .describe import describe, describe_json
    input_path(args.file)
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
    input_path(args.file)
    print(validity(args.file, max_projection_elements=args.max_projection_elements))
    return 0


def setup_validate(p: argparse.ArgumentParser) -> None:
    _setup_file(p)


def cmd_projection(args) -> int:
    from . import generators
    gen = generators.get(args.generator)
    if not 0 <= args.seed < 2**64:  # spec 1: the seed is a 64-bit unsigned integer
        raise UsageError(f"--seed must be in [0, 2^64), got {args.seed}")
    for opt, v, low in (("--r", args.r, 1), ("--n-in", args.n_in, 1), ("--n-out", args.n_out, 1),
                        ("--group", args.group, 0)):
        if v < low:
            raise UsageError(f"{opt} must be >= {low}, got {v}")
    if args.group and args.generator == "peft-mt19937":
        raise UsageError("--group applies to philox4x32-10 only (peft-mt19937 has one shared pair)")
    if args.out:
        output_path(args.out, "--out")
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
    from .errors import ConversionError
    from .peft_interop import adapter_to_peft, peft_to_adapter
    output_path(args.out, "--out", folder=bool(args.to_peft))
    if args.in_features is not None and args.in_features < 1:
        raise UsageError(f"--in-features must be >= 1, got {args.in_features}")
    if args.from_peft:
        if not os.path.isdir(input_path(args.from_peft, "--from-peft")):
            raise ConversionError(f"--from-peft {args.from_peft}: is a file, not a PEFT checkpoint folder "
                                  "(adapter_config.json + adapter_model.safetensors)")
        dims = None
        if args.dims:
            dims = _read_dims(input_path(args.dims, "--dims"))
        ad = peft_to_adapter(args.from_peft, dims=dims, in_features=args.in_features,
                             keep_projections=args.keep_projections)
        save_adapter(ad, args.out)
        cfg = ad.config
        print(f"wrote {args.out}: {len(cfg.modules)} modules, r {cfg.r}, generator {cfg.generator}"
              + (f", seed {cfg.seed}" if cfg.seed is not None else "") + f", {os.path.getsize(args.out)} bytes")
    else:
        ad = load_adapter(input_path(args.to_peft, "--to-peft"), max_projection_elements=args.max_projection_elements)
        adapter_to_peft(ad, args.out, keep_projections=args.keep_projections)
        seed_only = ad.config.generator == "peft-mt19937" and not args.keep_projections
        print(f"wrote {args.out}/adapter_config.json and adapter_model.safetensors "
              f"({'seed only' if seed_only else 'projections stored'})")
    return 0


def _read_dims(path: str) -> dict[str, tuple[int, int]]:
    """--dims: a JSON object {"module path": [in_features, out_features]}, read with the bounds of
    ``peft_interop.read_dims`` (size, depth, numbers; a file of another kind: exit 1)."""
    from .errors import ConversionError
    from .peft_interop import read_dims
    if os.path.isdir(path):
        raise ConversionError(f"--dims {path}: is a folder, not a JSON file")
    try:
        return read_dims(path)
    except ConversionError as exc:
        raise ConversionError(f"--dims {exc}") from None


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
    if args.out:
        output_path(args.out, "--out", folder=True)
    return run(args.out)


def setup_showcase(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", metavar="DIR", help="folder for the files it writes (default: a new temporary folder, "
                                                "never the working folder)")


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
        print(one_line(f"{self.prog}: error: {message} (see '{self.prog} --help')"), file=sys.stderr)
        raise SystemExit(2)


def one_line(text: str) -> str:
    """A message as the one line the CLI promises (a user's exception text may hold newlines)."""
    return " ".join(str(text).split()) if "\n" in str(text) or "\r" in str(text) else str(text)


def plugin_entry_points() -> dict[str, metadata.EntryPoint]:
    """The subcommands other packages publish (entry-point group ``vera_ref.commands``), by name."""
    eps = metadata.entry_points(group=ENTRY_POINT_GROUP)
    core = {c.name for c in CORE_COMMANDS}
    return {ep.name: ep for ep in sorted(eps, key=lambda e: e.name) if ep.name not in core}


def _installed(module: str) -> bool:
    """Whether a top-level package can be imported here, found without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or blocked entry in sys.modules: not importable
        return False


def missing_packages(command: str) -> list[str]:
    """The packages ``command`` needs (PLUGIN_NEEDS) that are not installed here."""
    return [m for m in PLUGIN_NEEDS.get(command, ()) if not _installed(m)]


def pip_hint(packages: list[str]) -> str:
    """``pip install 'vera-ref[torch,demo]'``: every extra that installs ``packages``, in one command."""
    extras = {EXTRA_OF.get(m.partition(".")[0]) for m in packages}
    named = [e for e in EXTRAS_ORDER if e in extras]
    others = sorted(m for m in packages if EXTRA_OF.get(m.partition(".")[0]) is None)
    return " and ".join(filter(None, [f"pip install 'vera-ref[{','.join(named)}]'" if named else "",
                                      f"pip install {' '.join(others)}" if others else ""]))


def install_hint(exc: ImportError) -> str:
    top = (exc.name or "").partition(".")[0]
    return f"needs the optional package {top!r} ({pip_hint([top])})"


def load_plugin(ep: metadata.EntryPoint) -> Command:
    """Import one plugin command; missing optional packages become one line naming every extra to install."""
    missing = missing_packages(ep.name)
    if missing:
        raise UsageError(f"the {ep.name} command needs {', '.join(missing)}, not installed here: "
                         f"{pip_hint(missing)}")
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
    """The parser; the one plugin command named in ``argv`` (if any) is loaded, the others only listed:
    those whose packages are installed with the core commands, the others under their own heading with
    the pip command that adds them."""
    plugins = plugin_entry_points()
    absent = {name: missing_packages(name) for name in plugins}
    absent = {name: m for name, m in absent.items() if m}
    epilog = "Run 'vera-ref COMMAND --help' for a command's options."
    if absent:
        by_hint: dict[str, list[str]] = {}
        for name, m in absent.items():
            by_hint.setdefault(pip_hint(m), []).append(name)
        width = max(len(", ".join(names)) for names in by_hint.values())
        epilog += "\n\ncommands that need packages not installed here:\n" + "\n".join(
            f"  {', '.join(names):<{width}}  needs: {hint}" for hint, names in by_hint.items())
    ap = _Parser(
        prog="vera-ref", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Reference tools of the VeRA kit: adapter files (spec 4), projections (spec 1-2),\n"
                    "test vectors (spec 6). Commands of other packages (conformance, ONNX, demo) are\n"
                    "listed when their packages are installed; the others are named below with the\n"
                    "pip command that adds them.",
        epilog=epilog)
    ap.add_argument("--version", action="version", version=f"vera-ref {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    for cmd in CORE_COMMANDS:
        _add(sub, cmd)
    wanted = next((a for a in (argv or []) if not a.startswith("-")), None)
    for name, ep in plugins.items():
        if name == wanted:
            _add(sub, load_plugin(ep))
        elif name in absent:  # a choice (so its name gets the pip line, not "invalid choice"), not listed
            sub.add_parser(name, add_help=False)
        else:
            sub.add_parser(name, help=f"(from {ep.value.partition(':')[0].partition('.')[0]}; "
                                      f"'vera-ref {name} --help' for more)", add_help=False)
    return ap


def safe_output() -> None:
    """Make stdout and stderr write every character: one the stream cannot encode (a lone surrogate from a
    file's metadata, a non-UTF-8 file name) becomes a backslash escape, never a raw byte or a crash."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(errors="backslashreplace")
            except (ValueError, OSError):  # a closed or detached stream: nothing to protect
                pass


def main(argv: list[str] | None = None) -> int:
    safe_output()
    argv = sys.argv[1:] if argv is None else list(argv)
    name = next((a for a in argv if not a.startswith("-")), "")
    subject = None
    try:
        parser = build_parser(argv)
        args, extra = parser.parse_known_args(argv)
        if extra:  # named with the command, like every other mistake (argparse would say "vera-ref: ...")
            return _say(name, f"error: unrecognized arguments: {' '.join(extra)} (see 'vera-ref {name} --help')", 2)
        # the adapter file the command reads, named in a refusal of it
        subject = getattr(args, "file", None) or getattr(args, "to_peft", None) or getattr(args, "adapter", None)
        return args.func(args)
    except UsageError as exc:  # a value on the command line that cannot be used
        return _say(name, f"error: {exc}", 2)
    except VeraError as exc:  # a rejected input: one line, no traceback
        if isinstance(exc, AdapterFileError) and exc.code == "E4.6.0.1":  # the path typed is not there
            return _say(name, f"error: {exc.problem}", 2)
        if isinstance(exc, AdapterFileError) and subject and exc.field == "path":
            return _say(name, f"{subject}: {exc.problem}", 1)  # name the path: "is a directory" alone does not
        if isinstance(exc, AdapterFileError) and subject:
            return _say(name, f"{subject}: {exc}", 1)
        return _say(name, str(exc), 1)
    except ImportError as exc:
        if (exc.name or "").partition(".")[0] in OURS:  # one of our own modules is missing: a bug, not a user's
            return _internal(name, exc)
        return _say(name, f"error: {install_hint(exc)}", 2)
    except OSError as exc:  # a path typed that is not there: 2; a read or write that failed: 1
        code = 2 if exc.errno in (errno.ENOENT, errno.ENOTDIR) else 1
        return _say(name, f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), code)
    except MemoryError:
        return _say(name, "out of memory", 1)
    except KeyboardInterrupt:
        return _say(name, "interrupted", 130)
    except Exception as exc:  # a bug of ours: still one line; the traceback on request
        return _internal(name, exc)


def _say(name: str, message: str, code: int) -> int:
    print(one_line(f"vera-ref {name}: {message}" if name else f"vera-ref: {message}"), file=sys.stderr)
    return code


def _internal(name: str, exc: BaseException) -> int:
    if os.environ.get("VERA_DEBUG"):
        raise exc
    return _say(name, f"internal error: {type(exc).__name__}: {str(exc)[:300]} "
                      "(set VERA_DEBUG=1 for the traceback)", 3)


if __name__ == "__main__":  # python -m vera_ref.cli: run the imported module, so plugins see one Command class
    from vera_ref.cli import main as _main
    sys.exit(_main())
