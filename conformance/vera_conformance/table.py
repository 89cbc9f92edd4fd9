"""The README's conformance table: every shipped implementation through the kit, on CPU,
in the dtypes of a default run (float32, float16, bfloat16, float64, the undeclared ones
probed, and tf32 where declared); "skip" marks a dtype the probe found unsupported, "-" one
not run, and rows that no implementation runs are left out.

    python -m vera_conformance.table [--max-examples 10]
"""
from __future__ import annotations

import argparse
import sys

from .protocol import ConformanceError, load_implementation
from .runner import default_dtypes, run

SHIPPED = [("vera_ref", "vera_conformance.impls.reference:make"),
           ("vera_torch", "vera_conformance.impls.torch_impl:make"),
           ("vera_onnx (ORT CPU)", "vera_conformance.impls.onnx_impl:make"),
           ("PEFT VeRA layer", "vera_conformance.impls.peft_impl:make"),
           ("vera_jax (JAX CPU)", "vera_conformance.impls.jax_impl:make")]
MARK = {"passed": "pass", "failed": "FAIL", "skipped": "skip", "xfailed": "xfail", "xpassed": "XPASS"}


def table(max_examples: int = 10, impls=SHIPPED) -> str:
    cols, rows = [], {}
    for label, spec in impls:
        try:
            impl = load_implementation(spec)
        except ConformanceError as exc:
            cols.append(f"{label} (not installed: {exc})")
            continue
        cols.append(label)
        for res in run(impl, spec, ["cpu"], default_dtypes(impl), max_examples,
                       echo=lambda s: None):
            key = res.id.removesuffix("_cpu")
            rows.setdefault(key, {})[label] = MARK[res.status]
    lines = ["| check (CPU) | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for key in rows:  # the plan's order: checks, then dtypes; rows nobody runs are left out
        if not {"pass", "FAIL", "xfail", "XPASS"} & set(rows[key].values()):
            continue
        lines.append(f"| `{key}` | " + " | ".join(rows[key].get(c, "-") for c in cols) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-examples", type=int, default=10)
    print(table(ap.parse_args(argv).max_examples))
    return 0


if __name__ == "__main__":
    sys.exit(main())
