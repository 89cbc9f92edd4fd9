#!/usr/bin/env python
"""Mutation testing of the kit's own code, in bounded time on 2 cores (issue 15).

    python tools/mutate.py --package vera_ref --minutes 12 --jobs 2
    python tools/mutate.py --file vera_ref/philox.py --lines 20-80 --sample 40 --seed 1
    python tools/mutate.py --package vera_torch --function VeraLayer.merge --json out.json
    python tools/mutate.py --package vera_ref --list          # the mutants, not run

What it does:

1. copies the checkout (``[snapshot] include`` of ``tools/mutants/config.toml``) into a
   temporary folder, one copy per job; the working tree is never written. The copy comes
   first on ``sys.path`` and ``PYTHONPATH`` so it wins over the editable install;
2. makes single-point mutants of the chosen files with :mod:`ast` (comparison flips,
   off-by-one constants, and/or swaps, ``not`` removed, a guard ``if ...: raise`` removed,
   a call statement or ``assert`` removed, ``return x`` -> ``return None``, arithmetic
   operator swaps, slice bounds moved by one, dtype and layout name swaps); each mutant
   changes one source span and is identified by a stable id (file, function, the span's
   text before and after, occurrence), which ``tools/mutants/EQUIVALENT*.md`` refer to;
3. runs the package's test folders once with a line tracer on the chosen files: which
   test executes which line, how long each test takes, and which tests fail unmutated
   (those are left out of every later run and listed). Lines a shared (module, class, package,
   session) fixture runs count for every test using it; the tracer stays on when the code under
   test calls ``sys.settrace(None)`` and is put back before each test phase if it was replaced;
   code in subprocesses and forked children is not traced;
4. for each mutant, runs only the tests that executed its line (fastest first, ``-x``) in a
   child forked from a process that already imported the heavy third-party modules, under
   a per-mutant timeout (3x the selected tests' traced time, with the setup of the module- or
   session-scoped fixtures they use and the collection of the test files, + 10 s); a failure or error is
   ``killed`` (so is a crash: SIGSEGV, SIGABRT, SIGBUS, SIGFPE, SIGILL), exceeding the
   timeout is ``timeout`` (counted as killed), all passing is
   ``survived``, no test executing the line is ``no-cov`` (counted as survived);
5. prints killed / timeout / survived / no-cov / equivalent per file, the mutation score on
   non-equivalent mutants, and the diff of every survivor; ``--json`` writes it all.

``--minutes`` bounds the whole run: no new mutant starts after it (those are ``not-run``).
Not part of ``make test``.
"""
from __future__ import annotations

import argparse
import ast
import difflib
import fnmatch
import hashlib
import json
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "tools" / "mutants" / "config.toml"
EQUIVALENT = ROOT / "tools" / "mutants" / "EQUIVALENT.md"

# ---------------------------------------------------------------------------------------------
# mutant generation
# ---------------------------------------------------------------------------------------------

CMP_FLIP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
            ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}
BIN_SWAP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Div,
            ast.Mod: ast.FloorDiv, ast.LShift: ast.RShift, ast.RShift: ast.LShift, ast.BitAnd: ast.BitOr,
            ast.BitOr: ast.BitAnd, ast.BitXor: ast.BitOr, ast.Pow: ast.Mult, ast.MatMult: ast.Mult}
# dtype / layout vocabulary: a string constant or an attribute (np.float32, torch.float16) with one of
# these names is swapped for its partner
NAME_SWAP = {"float64": "float32", "float32": "float64", "float16": "bfloat16", "bfloat16": "float16",
             "uint32": "uint64", "uint64": "uint32", "int64": "int32", "int32": "int64",
             "linear": "conv1d", "conv1d": "linear", "philox4x32-10": "peft-mt19937",
             "peft-mt19937": "philox4x32-10", "shared": "per_module", "per_module": "shared"}
SKIP_COMMENT = "pragma: no mutate"


@dataclass
class Mutant:
    id: str
    file: str            # path relative to the repository root
    line: int
    end_line: int
    qualname: str
    op: str
    before: str
    after: str
    start: int = 0       # byte offsets of the replaced span in the file
    end: int = 0
    uses: tuple = ()      # module-level assignment: the lines of this file that read its names
    names: tuple = ()     # module-level assignment: the names it assigns
    outcome: str = "pending"
    seconds: float = 0.0
    tests: int = 0
    detail: str = ""
    diff: str = ""


class _Collector(ast.NodeVisitor):
    """Walks one module and records (node span, replacement source, operator name)."""

    def __init__(self, src: bytes) -> None:
        self.src = src
        self.lines = src.split(b"\n")
        self.offsets = [0]
        for ln in self.lines:
            self.offsets.append(self.offsets[-1] + len(ln) + 1)
        self.stack: list[str] = []
        self.sites: list[tuple] = []  # start, end, line, end_line, qual, op, repl, names
        self.skip_ids: set[int] = set()
        self.top_names: tuple = ()  # names assigned by the module-level statement being walked
        self.uses: dict[str, set[int]] = {}  # module-level name -> lines that load it

    # -- helpers
    def span(self, node: ast.AST) -> tuple[int, int]:
        return (self.offsets[node.lineno - 1] + node.col_offset, self.offsets[node.end_lineno - 1] + node.end_col_offset)

    def add(self, node: ast.AST, op: str, repl: str) -> None:
        if SKIP_COMMENT.encode() in self.lines[node.lineno - 1]:
            return
        s, e = self.span(node)
        names = () if self.stack else self.top_names
        self.sites.append((s, e, node.lineno, node.end_lineno, ".".join(self.stack) or "<module>", op, repl, names))

    def expr(self, node: ast.expr, op: str, new: ast.expr) -> None:
        self.add(node, op, "(" + ast.unparse(new) + ")")

    def skip(self, *nodes) -> None:
        for n in nodes:
            if n is None:
                continue
            for sub in ast.walk(n):
                self.skip_ids.add(id(sub))

    # -- scopes
    def _scope(self, node) -> None:
        self.skip(*node.decorator_list)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            self.skip(node.returns)
            for a in node.args.args + node.args.kwonlyargs + node.args.posonlyargs + [node.args.vararg, node.args.kwarg]:
                if a is not None:
                    self.skip(a.annotation)
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            self.skip(body[0])
        self.stack.append(node.name)
        self.generic_visit(node)
        self.stack.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _scope

    def visit_Module(self, node: ast.Module) -> None:
        if node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant):
            self.skip(node.body[0])
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Load):
                self.uses.setdefault(sub.id, set()).add(sub.lineno)
        for stmt in node.body:
            targets = stmt.targets if isinstance(stmt, ast.Assign) else \
                [stmt.target] if isinstance(stmt, (ast.AnnAssign, ast.AugAssign)) else []
            self.top_names = tuple(t.id for t in targets if isinstance(t, ast.Name))
            self.visit(stmt)
        self.top_names = ()

    def generic_visit(self, node: ast.AST) -> None:
        if id(node) in self.skip_ids:
            return
        super().generic_visit(node)

    def visit(self, node: ast.AST) -> None:
        if id(node) in self.skip_ids:
            return
        super().visit(node)

    # -- never mutated
    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self.skip(node.annotation)
        self.generic_visit(node)

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:  # f-string spans are unreliable in 3.11
        return

    def visit_Raise(self, node: ast.Raise) -> None:  # the message of a raise: covered by exact-message tests
        return

    def visit_ImportFrom(self, node) -> None:
        return

    def visit_If(self, node: ast.If) -> None:
        t = node.test
        if (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
                (isinstance(t, ast.Compare) and isinstance(t.left, ast.Name) and t.left.id == "__name__"):
            return
        if len(node.body) == 1 and isinstance(node.body[0], ast.Raise) and not node.orelse:
            self.add(node, "guard-removed", "pass")
        self.generic_visit(node)

    # -- statements
    def visit_Expr(self, node: ast.Expr) -> None:
        if isinstance(node.value, ast.Call):
            self.add(node, "call-removed", "pass")
        self.generic_visit(node)

    def visit_Assert(self, node: ast.Assert) -> None:
        self.add(node, "assert-removed", "pass")
        self.skip(node.msg)
        self.generic_visit(node)

    def visit_Return(self, node: ast.Return) -> None:
        v = node.value
        if v is not None and not (isinstance(v, ast.Constant) and v.value is None):
            self.add(node, "return-none", "return None")
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        new = BIN_SWAP.get(type(node.op))
        if new is not None:
            m = ast.AugAssign(target=node.target, op=new(), value=node.value)
            self.add(node, f"augop {type(node.op).__name__}->{new.__name__}", ast.unparse(m))
        self.generic_visit(node)

    def visit_Break(self, node) -> None:
        self.add(node, "break->continue", "continue")

    def visit_Continue(self, node) -> None:
        self.add(node, "continue->break", "break")

    # -- expressions
    def visit_Compare(self, node: ast.Compare) -> None:
        for i, o in enumerate(node.ops):
            new = CMP_FLIP.get(type(o))
            if new is not None:
                ops = list(node.ops)
                ops[i] = new()
                self.expr(node, f"cmp {type(o).__name__}->{new.__name__}",
                          ast.Compare(left=node.left, ops=ops, comparators=node.comparators))
        self.generic_visit(node)

    def visit_BoolOp(self, node: ast.BoolOp) -> None:
        new = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        self.expr(node, f"boolop {type(node.op).__name__}->{type(new).__name__}", ast.BoolOp(op=new, values=node.values))
        self.generic_visit(node)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> None:
        if isinstance(node.op, ast.Not):
            self.expr(node, "not-removed", node.operand)
        elif isinstance(node.op, ast.USub) and not isinstance(node.operand, ast.Constant):
            self.expr(node, "neg-removed", node.operand)
        self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        new = BIN_SWAP.get(type(node.op))
        if new is not None and not (isinstance(node.op, ast.Mod) and isinstance(node.left, ast.Constant)
                                    and isinstance(node.left.value, str)):
            self.expr(node, f"binop {type(node.op).__name__}->{new.__name__}",
                      ast.BinOp(left=node.left, op=new(), right=node.right))
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        v = node.value
        if isinstance(v, bool):
            self.expr(node, f"const {v}->{not v}", ast.Constant(not v))
        elif isinstance(v, int):
            self.expr(node, "const n->n+1", ast.Constant(v + 1))
        elif isinstance(v, float):
            self.expr(node, "const x->x+1", ast.Constant(v + 1.0) if v != 0.0 else ast.Constant(1.0))
        elif isinstance(v, str) and v in NAME_SWAP:
            self.expr(node, f"name {v}->{NAME_SWAP[v]}", ast.Constant(NAME_SWAP[v]))

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr in NAME_SWAP and isinstance(node.ctx, ast.Load) and not node.attr.startswith("linear"):
            self.expr(node, f"name {node.attr}->{NAME_SWAP[node.attr]}",
                      ast.Attribute(value=node.value, attr=NAME_SWAP[node.attr], ctx=ast.Load()))
        self.generic_visit(node)

    def visit_Slice(self, node: ast.Slice) -> None:
        if node.lower is not None and not isinstance(node.lower, ast.Constant):
            self.expr(node.lower, "slice lower+1", ast.BinOp(left=node.lower, op=ast.Add(), right=ast.Constant(1)))
        if node.upper is not None and not isinstance(node.upper, ast.Constant):
            self.expr(node.upper, "slice upper-1", ast.BinOp(left=node.upper, op=ast.Sub(), right=ast.Constant(1)))
        self.generic_visit(node)


def make_mutants(path: Path, rel: str) -> list[Mutant]:
    src = path.read_bytes()
    tree = ast.parse(src)
    col = _Collector(src)
    col.visit(tree)
    base_dump = ast.dump(tree)
    seen: dict[tuple[str, str, str], int] = {}
    out: list[Mutant] = []
    for s, e, line, end_line, qual, op, repl, names in col.sites:
        before = src[s:e].decode()
        new = src[:s] + repl.encode() + src[e:]
        try:
            t2 = ast.parse(new)
        except SyntaxError:
            continue
        if ast.dump(t2) == base_dump:
            continue
        key = (qual, before, repl)
        n = seen.get(key, 0)
        seen[key] = n + 1
        h = hashlib.sha256(f"{rel}\0{qual}\0{before}\0{repl}\0{n}".encode()).hexdigest()[:10]
        used = tuple(sorted({ln for n in names for ln in col.uses.get(n, ())}))
        out.append(Mutant(id=f"{rel}:{qual}:{h}", file=rel, line=line, end_line=end_line, qualname=qual, op=op,
                          before=before, after=repl, start=s, end=e, uses=used, names=tuple(names)))
    return out


def mutated_source(src: bytes, m: Mutant) -> bytes:
    return src[:m.start] + m.after.encode() + src[m.end:]


def diff_of(src: bytes, m: Mutant) -> str:
    a = src.decode().splitlines(keepends=True)
    b = mutated_source(src, m).decode().splitlines(keepends=True)
    return "".join(difflib.unified_diff(a, b, f"a/{m.file}", f"b/{m.file}", n=1))


# ---------------------------------------------------------------------------------------------
# snapshot and forked pytest runs
# ---------------------------------------------------------------------------------------------

def snapshot(cfg: dict, dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis", ".pytest_cache", "*.egg-info")
    dest.mkdir(parents=True)
    for name in cfg["snapshot"]["include"]:
        p = ROOT / name
        if p.is_dir():
            shutil.copytree(p, dest / name, ignore=ignore, symlinks=True)
        elif p.exists():
            shutil.copy2(p, dest / name)
    for link, target in cfg["snapshot"].get("links", {}).items():
        lp = dest / link
        if not lp.exists():
            os.symlink(os.path.relpath(dest / target, lp.parent), lp)


class _Select:
    """pytest plugin: keep only the wanted node ids, fastest first."""

    def __init__(self, order: list[str]) -> None:
        self.rank = {nid: i for i, nid in enumerate(order)}

    def pytest_collection_modifyitems(self, config, items):
        keep = [it for it in items if it.nodeid in self.rank]
        drop = [it for it in items if it.nodeid not in self.rank]
        keep.sort(key=lambda it: self.rank[it.nodeid])
        if drop:
            config.hook.pytest_deselected(items=drop)
        items[:] = keep


class _Trace:
    """pytest plugin: which test executes which line of the target files; durations; outcomes.

    The tracer survives code under test that turns tracing off: while it runs, ``sys.settrace(None)``
    leaves it installed (code that saves ``sys.gettrace()`` and restores it later works unchanged), a
    foreign tracer is let in but ours comes back before the next setup, call or teardown phase and
    fixture setup (as it does if C code reset it), and threads started through :mod:`threading`
    get it too. Lines run while a module-, class-, package- or session-scoped fixture is set up are
    counted for every test that uses that fixture, not only the first one that happened to set it
    up: a mutant of the code a shared fixture runs selects all the tests that read its result."""

    def __init__(self, targets: set[str]) -> None:
        self.targets = targets
        self.current = "<import>"
        self.hits: dict[str, dict[int, set[str]]] = {t: {} for t in targets}
        self.durations: dict[str, float] = {}
        self.failed: set[str] = set()
        self.fixtures: dict[str, list[str]] = {}          # test -> keys of the shared fixtures it uses
        self.fixture_seconds: dict[str, float] = {}       # shared fixture key -> time its setups took
        self.collect_seconds: dict[str, float] = {}       # test file -> time its collection took
        self.reinstalled = 0   # times the tracer was found replaced or off at a phase and put back
        self.kept = 0          # sys.settrace(None) calls that left it on
        self.foreign = 0       # foreign tracers let in for a while
        self._fn = self.tracer  # one bound-method object: `sys.gettrace() is self._fn` must hold
        self._real_settrace = sys.settrace

    def _local(self, frame, event, arg):
        if event == "line":
            self.hits[frame.f_code.co_filename].setdefault(frame.f_lineno, set()).add(self.current)
        return self._local

    def tracer(self, frame, event, arg):
        if event == "call" and frame.f_code.co_filename in self.targets:
            self.hits[frame.f_code.co_filename].setdefault(frame.f_lineno, set()).add(self.current)
            return self._local
        return None

    def _settrace(self, fn) -> None:
        """Stands in for ``sys.settrace`` during the traced run."""
        if fn is None or fn is self._fn:
            self.kept += fn is None
            self._real_settrace(self._fn)
        else:
            self.foreign += 1
            self._real_settrace(fn)

    def ensure(self) -> None:
        """Put the tracer back if something turned it off or replaced it (for this thread and new ones)."""
        import threading
        if sys.gettrace() is not self._fn:
            self.reinstalled += 1
            self._real_settrace(self._fn)
        if threading.gettrace() is not self._fn:
            threading.settrace(self._fn)

    def start(self) -> None:
        import threading
        sys.settrace = self._settrace
        self._real_settrace(self._fn)
        threading.settrace(self._fn)

    def stop(self) -> None:
        import threading
        sys.settrace = self._real_settrace
        sys.settrace(None)
        threading.settrace(None)

    @staticmethod
    def _shared_key(fixturedef) -> str | None:
        if getattr(fixturedef, "scope", "function") == "function":
            return None
        return f"<fixture {fixturedef.baseid}::{fixturedef.argname}>"

    def pytest_runtest_protocol(self, item, nextitem):  # noqa: ARG002
        self.current = item.nodeid
        try:
            defs = item._fixtureinfo.name2fixturedefs  # private but stable since pytest 3
            keys = {self._shared_key(defs[n][-1]) for n in item.fixturenames if defs.get(n)}
        except AttributeError:
            keys = set()
        self.fixtures[item.nodeid] = sorted(k for k in keys if k)
        self._t0 = time.perf_counter()

    def _phase(self):
        self.ensure()
        yield

    pytest_runtest_setup = pytest_runtest_call = pytest_runtest_teardown = _phase

    def pytest_fixture_setup(self, fixturedef, request):  # noqa: ARG002
        self.ensure()
        key = self._shared_key(fixturedef)
        if key is None:
            yield
            return
        prev, self.current = self.current, key
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.fixture_seconds[key] = self.fixture_seconds.get(key, 0.0) + time.perf_counter() - t0
            self.current = prev

    def pytest_make_collect_report(self, collector):
        t0 = time.perf_counter()
        yield
        if type(collector).__name__ == "Module":
            self.collect_seconds[collector.nodeid] = time.perf_counter() - t0

    def pytest_runtest_logreport(self, report):
        if report.failed:
            self.failed.add(report.nodeid)
        if report.when == "teardown":
            self.durations[report.nodeid] = time.perf_counter() - self._t0
            self.current = "<between>"

    def result(self, root: Path) -> dict:
        """The trace as saved: a shared fixture's lines belong to every test that uses the fixture."""
        users: dict[str, set[str]] = {}
        for test, keys in self.fixtures.items():
            for k in keys:
                users.setdefault(k, set()).add(test)
        hits = {}
        for f, d in self.hits.items():
            per = {}
            for ln, ids in d.items():
                out = set()
                for i in ids:
                    out |= users.get(i, set()) if i.startswith("<fixture ") else {i}
                per[ln] = sorted(out)
            hits[str(Path(f).relative_to(root))] = per
        return {"hits": hits, "durations": self.durations, "failed": sorted(self.failed),
                "fixtures": {t: k for t, k in self.fixtures.items() if k}, "fixture_seconds": self.fixture_seconds,
                "collect_seconds": self.collect_seconds,
                "tracer": {"reinstalled": self.reinstalled, "kept_on": self.kept, "foreign": self.foreign}}

    @classmethod
    def mark_hooks(cls) -> None:
        """The generator hooks are pytest hook wrappers (pytest is imported in the traced child only)."""
        import pytest
        for name in ("_phase", "pytest_fixture_setup", "pytest_make_collect_report"):
            pytest.hookimpl(hookwrapper=True)(getattr(cls, name))


def _child_setup(work: Path, cfg: dict, log: Path) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.setpgid(0, 0)
    os.chdir(work)
    paths = [str(work / p) for p in cfg["snapshot"]["paths"]]
    sys.path[:0] = paths
    os.environ["PYTHONPATH"] = os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    sys.dont_write_bytecode = True


def _pytest_args(files: list[str], extra: list[str]) -> list[str]:
    return ["-q", "-rfE", "-p", "no:cacheprovider", "-o", "addopts=", "--rootdir", ".", "-W", "ignore::DeprecationWarning",
            *extra, *files]


def trace_run(work: Path, cfg: dict, test_files: list[str], targets: list[str], log: Path, out: Path) -> int:
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            _child_setup(work, cfg, log)
            import pytest
            _Trace.mark_hooks()
            tr = _Trace({str(work / t) for t in targets})
            tr.start()
            try:
                code = pytest.main(_pytest_args(test_files, []), plugins=[tr])
            finally:
                tr.stop()
            out.write_text(json.dumps({**tr.result(work), "exit": int(code)}))
        except BaseException as e:  # noqa: BLE001 -- the child must never return into the parent's code
            print("trace run crashed:", repr(e), flush=True)
        finally:
            sys.stdout.flush()
            os._exit(int(code) if isinstance(code, int) else 3)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def start_mutant(work: Path, cfg: dict, m: Mutant, src: bytes, order: list[str], log: Path) -> int:
    (work / m.file).write_bytes(mutated_source(src, m))
    files = sorted({nid.split("::")[0] for nid in order})
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            _child_setup(work, cfg, log)
            import pytest
            code = int(pytest.main(_pytest_args(files, ["-x"]), plugins=[_Select(order)]))
        except BaseException as e:  # noqa: BLE001
            print("mutant run crashed:", repr(e), flush=True)
        finally:
            sys.stdout.flush()
            os._exit(code)
    return pid


# ---------------------------------------------------------------------------------------------
# campaign
# ---------------------------------------------------------------------------------------------

def trace_cache_path(base: Path, test_files: list[str], files: list[str]) -> Path:
    """Where the traced run of these tests over these files is kept: keyed by every .py file of the
    copy (any change anywhere runs the trace again), the test list and the target files."""
    h = hashlib.sha256("\0".join(test_files + ["|"] + files + [os.environ.get("HYPOTHESIS_PROFILE", "")]).encode())
    for f in sorted(base.rglob("*.py")):
        h.update(str(f.relative_to(base)).encode() + b"\0" + f.read_bytes())
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vera-mutate"
    return root / f"trace-{h.hexdigest()[:24]}.json"


def read_equivalent() -> dict[str, str]:
    """Reviewed equivalent mutants: EQUIVALENT.md and one EQUIVALENT-<package>.md per package."""
    out: dict[str, str] = {}
    for path in sorted(EQUIVALENT.parent.glob("EQUIVALENT*.md")):
        for line in path.read_text().splitlines():
            m = re.match(r"\s*[-*]\s+`([^`]+)`\s*(?:[-:\u2014]+\s*)?(.*)", line)
            if m:
                out[m.group(1)] = m.group(2).strip()
    return out


def test_files_for(pkg: str, dirs: list[str], base: Path) -> list[str]:
    """Test files under dirs that import the package (statically: import/from/importorskip)."""
    out = []
    for d in dirs:
        for f in sorted((base / d).rglob("test_*.py")):
            text = f.read_text()
            if re.search(rf"(^|\s)(import|from)\s+{pkg}\b|importorskip\([\"']{pkg}", text, re.M):
                out.append(str(f.relative_to(base)))
    return out


def choose_files(cfg: dict, args) -> tuple[str, list[str]]:
    pkgs = cfg["packages"]
    if args.file:
        rels = [str(Path(f).resolve().relative_to(ROOT)) if Path(f).is_absolute() else f for f in args.file]
        for name, p in pkgs.items():
            if all(rel.startswith(p["source"].rstrip("/") + "/") for rel in rels):
                return name, rels
        sys.exit(f"mutate: {' '.join(rels)} are not files of one package of {CONFIG.relative_to(ROOT)}")
    if args.package not in pkgs:
        sys.exit(f"mutate: unknown package {args.package!r}; known: {', '.join(pkgs)}")
    p = pkgs[args.package]
    files = sorted(str(f.relative_to(ROOT)) for f in (ROOT / p["source"]).rglob("*.py") if "__pycache__" not in f.parts)
    skip = p.get("skip", [])
    return args.package, [f for f in files if not any(fnmatch.fnmatch(f, s) for s in skip)]


def select(muts: list[Mutant], args) -> list[Mutant]:
    if args.lines:
        a, _, b = args.lines.partition("-")
        lo, hi = int(a), int(b or a)
        muts = [m for m in muts if lo <= m.line <= hi]
    if args.function:
        muts = [m for m in muts if m.qualname == args.function or m.qualname.startswith(args.function + ".")]
    if args.ids:
        want = set(Path(args.ids).read_text().split()) if Path(args.ids).exists() else set(args.ids.split(","))
        muts = [m for m in muts if m.id in want]
    if args.sample and args.sample < len(muts):
        muts = random.Random(args.seed).sample(muts, args.sample)  # run in random order: a cut budget stays a sample
    return muts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--package", help="a package of tools/mutants/config.toml (vera_ref, vera_torch, ...)")
    g.add_argument("--file", nargs="+", help="source files of one package, relative to the repository root")
    ap.add_argument("--lines", help="only mutants starting in this line range, e.g. 40-90")
    ap.add_argument("--function", help="only mutants inside this function (qualified name, e.g. VeraLayer.merge)")
    ap.add_argument("--ids", help="only these mutant ids (comma separated, or a file of ids)")
    ap.add_argument("--sample", type=int, default=0, help="random sample of N mutants (after the filters)")
    ap.add_argument("--seed", type=int, default=0, help="seed of --sample")
    ap.add_argument("--minutes", type=float, default=14.0, help="budget: no mutant starts after it")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--tests", nargs="*", help="test files to use instead of the package's folders")
    ap.add_argument("--timeout-factor", type=float, default=3.0)
    ap.add_argument("--json", help="write every mutant and the summary here")
    ap.add_argument("--list", action="store_true", help="print the mutants and exit")
    ap.add_argument("--full-hypothesis", action="store_true",
                    help="run hypothesis tests with the suite's own profile (default: [hypothesis] of the config)")
    ap.add_argument("--trace", help="reuse this trace file (from the cache folder) instead of tracing again")
    ap.add_argument("--no-cache", action="store_true", help="trace the tests again even if a cached trace fits")
    ap.add_argument("--keep", action="store_true", help="keep the temporary copies (their path is printed)")
    args = ap.parse_args(argv)
    t_start = time.monotonic()
    deadline = t_start + args.minutes * 60
    cfg = tomllib.loads(CONFIG.read_text())
    pkg, files = choose_files(cfg, args)
    equivalent = read_equivalent()

    tmp = Path(tempfile.mkdtemp(prefix="vera-mutate-"))
    try:
        base = tmp / "w0"
        snapshot(cfg, base)  # one consistent copy: others may edit the checkout meanwhile
        sources = {f: (base / f).read_bytes() for f in files}
        muts: list[Mutant] = []
        for f in files:
            muts.extend(make_mutants(base / f, f))
        total_generated = len(muts)
        muts = select(muts, args)
        if args.list:
            for m in muts:
                print(f"{m.id}  {m.file}:{m.line}  {m.op}: {m.before!r} -> {m.after!r}")
            print(f"{len(muts)} of {total_generated} mutants")
            return 0
        for i in range(1, max(1, args.jobs)):
            shutil.copytree(base, tmp / f"w{i}", symlinks=True)
        works = [tmp / f"w{i}" for i in range(max(1, args.jobs))]

        os.environ.setdefault("OMP_NUM_THREADS", "1")
        os.environ.setdefault("MKL_NUM_THREADS", "1")
        os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
        sys.dont_write_bytecode = True
        for mod in cfg["snapshot"].get("preimport", []):
            try:
                __import__(mod)
            except Exception:  # noqa: BLE001 -- optional third-party module absent: fine
                pass
        hyp = cfg.get("hypothesis", {})
        if hyp and "hypothesis" in sys.modules and not args.full_hypothesis:
            # the test suite's conftest loads the profile named by HYPOTHESIS_PROFILE: fewer, fixed examples
            from hypothesis import HealthCheck, settings
            settings.register_profile("mutate", deadline=None, max_examples=int(hyp.get("max_examples", 12)),
                                      derandomize=True, database=None, suppress_health_check=list(HealthCheck))
            os.environ["HYPOTHESIS_PROFILE"] = "mutate"
        leaked = [m for m in sys.modules if m.split(".")[0] in cfg["packages"]]
        if leaked:
            sys.exit(f"mutate: preimports loaded our own packages {leaked}; remove them from [snapshot] preimport")

        test_files = args.tests or test_files_for(pkg, cfg["packages"][pkg]["tests"], base)
        print(f"mutate: {pkg}: {len(files)} files, {len(muts)} of {total_generated} mutants, "
              f"tests: {' '.join(test_files)}", flush=True)
        t0 = time.monotonic()
        cache = trace_cache_path(base, test_files, files)
        if args.trace:  # a trace of an earlier run, trusted as is (its tests and lines must still match)
            trace = json.loads(Path(args.trace).read_text())
            print(f"mutate: traced run taken from {args.trace}", flush=True)
        elif cache.exists() and not args.no_cache:
            trace = json.loads(cache.read_text())
            print(f"mutate: traced run reused from {cache}", flush=True)
        else:
            tr_out = tmp / "trace.json"
            code = trace_run(base, cfg, test_files, files, tmp / "trace.log", tr_out)
            if not tr_out.exists():
                print((tmp / "trace.log").read_text()[-4000:])
                sys.exit(f"mutate: the traced test run crashed (exit {code})")
            trace = json.loads(tr_out.read_text())
            cache.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(tr_out, cache)
        failed = set(trace["failed"])
        durations = trace["durations"]
        print(f"mutate: traced run {time.monotonic() - t0:.0f} s, {len(durations)} tests, "
              f"{len(failed)} failing unmutated (left out): {' '.join(sorted(failed)) or '-'}", flush=True)

        test_text = {f: (base / f).read_text(errors="replace") for f in test_files}
        tracer = trace.get("tracer", {})
        if tracer.get("reinstalled") or tracer.get("kept_on") or tracer.get("foreign"):
            print(f"mutate: the tests turned tracing off or replaced it; the tracer was kept on "
                  f"{tracer.get('kept_on', 0)} times, put back {tracer.get('reinstalled', 0)} times "
                  f"({tracer.get('foreign', 0)} foreign tracers let in for a while)", flush=True)

        collect_all = sum(trace.get("collect_seconds", {}).values())

        def expected_seconds(order: list[str]) -> float:
            """What the selected tests took in the traced run, plus the setup of the shared fixtures each
            uses (it may fall to any of them) and the collection of every test file: the traced run paid
            the imports once, in whichever file came first, and a mutant's run pays them in its own."""
            fx, fxs = trace.get("fixtures", {}), trace.get("fixture_seconds", {})
            used = {k for i in order for k in fx.get(i, ())}
            return sum(durations[i] for i in order) + sum(fxs.get(k, 0.0) for k in used) + collect_all

        def tests_for(m: Mutant) -> list[str]:
            hits = trace["hits"].get(m.file, {})
            ids: set[str] = set()
            for ln in range(m.line, m.end_line + 1):
                ids.update(hits.get(str(ln), ()))
            if ids & {"<import>", "<between>"}:
                readers = {i for ln in m.uses for i in hits.get(str(ln), ())} - {"<import>", "<between>"}
                if m.names:  # and the tests of files that name it (a constant a test imports and checks)
                    named = [f for f in test_text if any(re.search(rf"\b{re.escape(n)}\b", test_text[f])
                                                         for n in m.names)]
                    readers |= {i for i in durations if i.split("::")[0] in named}
                ids.update(readers)  # a module-level assignment: the tests that ran a line of this file reading it
                if not readers:  # other module-level code: every test that ran code of the file
                    for per in hits.values():
                        ids.update(per)
            ids = {i for i in ids if i in durations and i not in failed}
            return sorted(ids, key=lambda i: (durations[i], i))

        todo = []
        for m in muts:
            m.diff = diff_of(sources[m.file], m)
            if m.id in equivalent:
                m.outcome, m.detail = "equivalent", equivalent[m.id]
                continue
            order = tests_for(m)
            if not order:
                m.outcome = "no-cov"
                continue
            todo.append((m, order))

        running: dict[int, tuple[Mutant, Path, float, float]] = {}
        free = list(works)
        done = 0
        while todo or running:
            while todo and free and time.monotonic() < deadline:
                m, order = todo.pop(0)
                work = free.pop()
                timeout = args.timeout_factor * expected_seconds(order) + 10.0
                pid = start_mutant(work, cfg, m, sources[m.file], order, tmp / f"{work.name}.log")
                m.tests = len(order)
                running[pid] = (m, work, time.monotonic(), timeout)
            if not running:
                break
            time.sleep(0.05)
            for pid, (m, work, t, timeout) in list(running.items()):
                res = os.waitpid(pid, os.WNOHANG)
                if res[0] == 0:
                    if time.monotonic() - t > timeout:
                        try:
                            os.killpg(pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                        os.waitpid(pid, 0)
                        m.outcome = "timeout"
                    else:
                        continue
                else:
                    rc = os.waitstatus_to_exitcode(res[1])
                    m.outcome = {0: "survived", 1: "killed", 2: "killed"}.get(rc, "error")
                    if -rc in CRASHES:  # the tests pass unmutated: the mutant made the process crash
                        m.outcome = "killed"
                    if m.outcome == "killed":  # by which test
                        log = (tmp / f"{work.name}.log").read_text(errors="replace")
                        hit = re.findall(r"^(?:FAILED|ERROR) (\S+)", log, re.M)
                        m.detail = hit[0] if hit else f"crashed ({signal.Signals(-rc).name})" if rc < 0 else ""
                    if m.outcome == "error":
                        m.detail = f"pytest exit {rc}: " + (tmp / f"{work.name}.log").read_text()[-300:]
                m.seconds = time.monotonic() - t
                (work / m.file).write_bytes(sources[m.file])  # restore
                del running[pid]
                free.append(work)
                done += 1
                if m.outcome != "killed":
                    print(f"  [{done}] {m.outcome:8s} {m.file}:{m.line} {m.op} ({m.seconds:.1f} s)", flush=True)
        for m, _ in todo:
            m.outcome = "not-run"

        report(pkg, muts, trace, time.monotonic() - t_start, args)
        if args.json:
            Path(args.json).write_text(json.dumps({
                "package": pkg, "files": files, "tests": test_files, "failing_unmutated": sorted(failed),
                "generated": total_generated, "seconds": time.monotonic() - t_start,
                "summary": summary(muts), "mutants": [asdict(m) for m in muts]}, indent=1))
        return 0
    finally:
        if args.keep:
            print(f"mutate: copies kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


# signals of a crash (not of the tool's own timeout kill): counted as killed
CRASHES = {signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGFPE, signal.SIGILL}
OUTCOMES = ("killed", "timeout", "survived", "no-cov", "equivalent", "error", "not-run")


def summary(muts: list[Mutant]) -> dict:
    per: dict[str, dict[str, int]] = {}
    for m in muts:
        per.setdefault(m.file, {o: 0 for o in OUTCOMES})[m.outcome] += 1
    tot = {o: sum(p[o] for p in per.values()) for o in OUTCOMES}
    return {"per_file": per, "total": tot, "score": score(tot)}


def score(c: dict[str, int]) -> float | None:
    caught = c["killed"] + c["timeout"]
    judged = caught + c["survived"] + c["no-cov"]
    return None if judged == 0 else caught / judged


def report(pkg: str, muts: list[Mutant], trace: dict, seconds: float, args) -> None:
    s = summary(muts)
    print(f"\n## mutation campaign: {pkg} ({seconds:.0f} s, jobs={args.jobs}"
          + (f", sample {args.sample} seed {args.seed}" if args.sample else "") + ")\n")
    print("| file | mutants | killed | timeout | survived | no-cov | equivalent | error | not-run | score |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for f, c in sorted(s["per_file"].items()):
        sc = score(c)
        print(f"| {f} | {sum(c.values())} | " + " | ".join(str(c[o]) for o in OUTCOMES)
              + f" | {'-' if sc is None else f'{sc:.1%}'} |")
    t = s["total"]
    sc = s["score"]
    print(f"| **total** | {sum(t.values())} | " + " | ".join(str(t[o]) for o in OUTCOMES)
          + f" | {'-' if sc is None else f'{sc:.1%}'} |")
    print("\nscore = (killed + timeout) / (killed + timeout + survived + no-cov); equivalent ones left out")
    bad = [m for m in muts if m.outcome in ("survived", "no-cov", "error")]
    if bad:
        print(f"\n## {len(bad)} surviving mutants\n")
    for m in bad:
        print(f"--- {m.outcome}: {m.id}  ({m.op}, line {m.line}, {m.tests} tests) {m.detail}")
        print(m.diff)


if __name__ == "__main__":
    sys.exit(main())
