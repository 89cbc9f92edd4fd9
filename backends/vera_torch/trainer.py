"""The Hugging Face Trainer with VeRA checkpoints that are the spec file (README "Training on several
machines").

    trainer = VeraTrainer(model=vera_model, args=TrainingArguments(...), train_dataset=ds)
    trainer.train()                                   # checkpoint-N/vera_adapter.safetensors at each save
    trainer.train(resume_from_checkpoint=True)        # resumes from that file (any world size)

``VeraTrainer`` saves, for the model, only the spec adapter file (vectors, config, base fingerprint;
A and B come from the seed, the frozen base weights from wherever the base came from) instead of the
whole state dict the Trainer writes for a model that is not a ``PreTrainedModel``, and resumes the
vectors from that file; optimizer, scheduler, RNG and trainer state are the Trainer's own files.
``VeraCheckpointCallback`` adds the spec file to the checkpoints of any other Trainer (which keeps
writing its own files too). Written against transformers 5.24 (constraints.txt); it overrides the
Trainer's ``_save`` and ``_load_from_checkpoint``. Under torchrun the Trainer wraps the model in DDP;
the vectors are plain tensors there and rank 0 writes.
"""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from . import distributed as vd
from .model import VeraModel

ADAPTER_FILE = "vera_adapter.safetensors"


def _vera(model: nn.Module) -> VeraModel:
    while not isinstance(model, VeraModel):
        inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            raise TypeError(f"expected a VeraModel (or a DDP wrapper of one), got {type(model).__name__}")
        model = inner
    return model


def _write(model: nn.Module, path: str, is_writer: bool) -> None:
    """Sharded vectors: a collective every rank calls; plain ones: the writer alone writes."""
    vm = _vera(model)
    if is_writer:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if vd.initialized() and vd.has_sharded_vectors(vm):
        vd.save_adapter(vm, path)
    elif is_writer:
        vm.save_adapter(path)


class VeraCheckpointCallback(TrainerCallback):
    """Writes ``checkpoint-N/vera_adapter.safetensors`` (the spec file) at each Trainer save."""

    def __init__(self, filename: str = ADAPTER_FILE) -> None:
        self.filename = filename

    def on_save(self, args: Any, state: Any, control: Any, model: nn.Module | None = None, **kwargs: Any) -> None:
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        _write(model, os.path.join(folder, self.filename), args.should_save)


class VeraTrainer(Trainer):
    """A Trainer whose model checkpoints are VeRA spec files (see the module docstring).

    Under FSDP2 (``fsdp=True``, ``fsdp_config={"version": 2, ...}``, on accelerator devices) every rank
    writes the spec file together (a collective; rank 0 writes) instead of gathering the whole model's
    state dict. ``ConfigError("fsdp", ...)`` when FSDP was asked for and Accelerate did not enable it:
    Accelerate 1.15 enables FSDP only for several processes on accelerator devices (its distributed type
    MULTI_CPU is not among them), so on CPU the Trainer would otherwise train with DDP without a word."""

    adapter_file = ADAPTER_FILE

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        if self.args.fsdp and not self.is_fsdp_enabled:
            from .errors import ConfigError
            kind = self.accelerator.state.distributed_type.value
            raise ConfigError("fsdp", f"FSDP was requested but Accelerate did not enable it (distributed type {kind}; "
                                      f"Accelerate enables FSDP only for several processes on accelerator devices): "
                                      f"the Trainer would train without it")

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if self.is_fsdp_enabled:  # every rank: the spec file (a collective), never the whole-model gather
            self._save(output_dir)
            return
        super().save_model(output_dir, _internal_call)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        _write(self.model, os.path.join(output_dir, self.adapter_file), self.args.should_save)
        if self.args.should_save:
            torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        path = os.path.join(resume_from_checkpoint, self.adapter_file)
        if not os.path.isfile(path):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        vd.load_vectors(_vera(model if model is not None else self.model), path)
