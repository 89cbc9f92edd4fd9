"""VeRA with the Hugging Face Trainer: one process, or several under torchrun (README "Training on several
machines"). A tiny BERT built from a config (no download) learns a synthetic labelling; each save writes
checkpoint-N/vera_adapter.safetensors (the spec file) and resuming reads it back.

    python examples/trainer_vera.py --output_dir runs/vera --max_steps 20
    torchrun --nproc_per_node 2 examples/trainer_vera.py --output_dir runs/vera --max_steps 20
    python examples/trainer_vera.py --output_dir runs/vera --max_steps 40 --resume_from_checkpoint runs/vera/checkpoint-20

Under torchrun the Trainer trains with DDP (gloo on CPU, NCCL on GPUs); the global batch is
--batch_size rows per process. --fsdp trains with FSDP2 instead (fsdp_config version 2, one unit per
BertLayer) on GPUs; on CPU Accelerate 1.15 does not enable FSDP, and the script says so and exits 2.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
from transformers import BertConfig, BertForSequenceClassification, TrainingArguments

from vera_torch import VeraConfig, get_vera_model
from vera_torch.errors import ConfigError
from vera_torch.trainer import VeraTrainer

TRAINER = VeraTrainer  # tests/distributed/worker.py swaps in a subclass to run FSDP2 on CPU


class Synthetic(torch.utils.data.Dataset):
    """Token rows labelled by whether token 7 occurs: learnable by the attention layers VeRA adapts."""

    def __init__(self, n: int = 256, seq: int = 12, vocab: int = 100) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, vocab, (n, seq), generator=g)
        self.labels = (self.ids == 7).any(-1).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.labels[i]}


def build() -> torch.nn.Module:
    torch.manual_seed(0)
    base = BertForSequenceClassification(BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48, vocab_size=100,
        num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    return get_vera_model(base, VeraConfig(r=16, target_modules=["query", "value"], seed=0,
                                           modules_to_save=["classifier"]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output_dir", required=True)
    ap.add_argument("--max_steps", type=int, default=20)
    ap.add_argument("--save_steps", type=int, default=10)
    ap.add_argument("--batch_size", type=int, default=8, help="rows per process and step")
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--fsdp", action="store_true", help="FSDP2 through Accelerate (accelerator devices only)")
    ap.add_argument("--resume_from_checkpoint", default=None,
                    help="a checkpoint-N folder, or 'last' for the newest in --output_dir")
    a = ap.parse_args(argv)
    args = TrainingArguments(
        output_dir=a.output_dir, max_steps=a.max_steps, save_steps=a.save_steps, save_strategy="steps",
        per_device_train_batch_size=a.batch_size, learning_rate=a.lr, lr_scheduler_type="constant",
        logging_steps=a.save_steps, report_to=[], use_cpu=not torch.cuda.is_available(),
        ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available() else None,
        remove_unused_columns=False,
        label_names=["labels"], dataloader_num_workers=0, seed=0, disable_tqdm=True,
        # BERT's loss is a mean over the rows of a process; without this the Trainer multiplies it by the
        # number of processes (it assumes a loss summed over the global count), doubling the step on 2 ranks
        average_tokens_across_devices=False,
        **(dict(fsdp=True, fsdp_config={"version": 2, "transformer_layer_cls_to_wrap": ["BertLayer"]})
           if a.fsdp else {}))
    try:
        trainer = TRAINER(model=build(), args=args, train_dataset=Synthetic())
    except ConfigError as e:
        print(f"trainer_vera.py: {e}", file=sys.stderr)
        return 2
    resume = True if a.resume_from_checkpoint == "last" else a.resume_from_checkpoint
    out = trainer.train(resume_from_checkpoint=resume)
    if trainer.args.should_save:
        print(f"trained to step {trainer.state.global_step}, loss {out.training_loss:.4f}; adapter files in "
              f"{os.path.join(a.output_dir, 'checkpoint-*', 'vera_adapter.safetensors')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
