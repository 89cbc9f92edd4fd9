"""Coverage-guided fuzz target for the adapter-file reader (spec 4.6), with atheris (PyPI).

    pip install atheris                     # 3.0.0 has a cp311 manylinux wheel, no dependencies
    python tools/atheris_reader.py -max_total_time=600 -rss_limit_mb=2048 corpus/

The corpus starts from the valid and invalid file vectors (spec/vectors/files). The target
reads each input from memory with the checks of ``load_adapter`` and fails (a crash that
atheris records with its input) on any exception other than ``AdapterFileError``, on an
``AdapterFileError`` whose code is not a rule of spec 4.6, and on an accepted input that does
not survive a write and re-read unchanged.
"""
from __future__ import annotations

import os
import sys

import atheris

with atheris.instrument_imports():
    from vera_ref import container
    from vera_ref.adapter import build_adapter, tensor_plan
    from vera_ref.errors import AdapterFileError
    from vera_ref.metadata import CONFIG_KEY, FORMAT_KEY, FORMAT_NAME, SPEC_VERSION, VERSION_KEY, config_json
    from vera_ref.resources import vectors_dir
    from vera_ref.rules import CODES


def test_one_input(data: bytes) -> None:
    try:
        meta, tensors = container.parse(data)
        ad = build_adapter(meta, tensors)
    except AdapterFileError as exc:
        if exc.code not in CODES:
            raise AssertionError(f"code {exc.code!r} is not a rule of spec 4.6: {exc}") from None
        return
    # accepted: writing it and reading it back gives the same document
    cfg = ad.config
    payload = container.to_bytes({FORMAT_KEY: FORMAT_NAME, VERSION_KEY: SPEC_VERSION, CONFIG_KEY: config_json(cfg)},
                                 tensor_plan(ad))
    back = build_adapter(*container.parse(payload))
    if config_json(back.config) != config_json(cfg):
        raise AssertionError("an accepted file does not round-trip")


def main() -> None:
    args = list(sys.argv)
    if not any(not a.startswith("-") for a in args[1:]):  # no corpus folder given: seed one
        corpus = os.path.abspath("atheris-corpus")
        os.makedirs(corpus, exist_ok=True)
        for p in (vectors_dir() / "files").iterdir():
            with open(os.path.join(corpus, p.name), "wb") as f:
                f.write(p.read_bytes())
        args.append(corpus)
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
