"""Reload a saved adapter in a fresh process and write its test logits (the demo's bit-identity check).

    python -m vera_demo.reload --adapter A.safetensors --texts texts.json --out logits.npy [--model-dir DIR]
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--texts", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--model-dir")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the same as the run that saved it)")
    args = ap.parse_args(argv)
    from vera_torch import VeraModel

    from .assets import model_dir
    from .minilm import Classifier, Tokenizer, load_bert
    from .train import logits_of
    torch.set_num_threads(args.threads)
    d = model_dir(args.model_dir)
    bert, cfg = load_bert(d)
    clf = Classifier(cfg, bert=bert)
    model = VeraModel.from_adapter(clf, args.adapter, vector_dtype="float32")  # as the demo loads it
    with open(args.texts) as f:
        texts = json.load(f)
    np.save(args.out, logits_of(model, Tokenizer(d), texts, desc="reloaded").numpy())
    return 0


if __name__ == "__main__":
    sys.exit(main())
