"""``vera-ref demo``: the main job (an entry point of the group ``vera_ref.commands``, README "Command line")."""
from __future__ import annotations

import argparse

from vera_ref.cli import Command


def _run(args: argparse.Namespace) -> int:
    from .run import run
    run(args)
    return 0


def _setup(p: argparse.ArgumentParser) -> None:
    from .run import add_arguments
    add_arguments(p)


DEMO = Command(
    "demo", "the main job: finetune MiniLM with VeRA offline, compare with baselines, ship to ONNX Runtime",
    "Finetune all-MiniLM-L6-v2 with VeRA (query/value, r=256) plus a head on Rotten Tomatoes snippets "
    "(split by movie), compare with majority class, a logistic probe, head only and PEFT LoRA r=8 on the "
    "same split, batches and budget (learning rates tuned for VeRA and LoRA with the same successive-halving "
    "schedule on a validation split of the training movies; --full trains every rate the full budget), then "
    "save, reload bit-identically, merge, export to ONNX and serve every VeRA adapter from one ONNX Runtime "
    "session in one mixed batch, checked row by row against torch. Prints its estimated time first and the "
    "real one at the end. Writes results/ (table, JSON, results.png with the training curves). Arguments are "
    "checked before any training starts.",
    _setup, _run)
