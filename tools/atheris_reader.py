"""Coverage-guided fuzz target for the adapter-file reader (spec 4.6), with atheris (PyPI).

    pip install atheris                     # 3.0.0 has a cp311 manylinux wheel, no dependencies
    python tools/atheris_reader.py -max_total_time=600 -rss_limit_mb=2048 corpus/

The corpus starts from the valid and invalid file vectors (spec/vectors/files), and a dictionary
of the tokens that issue 23's findings were made of (escaped structure ``\\u005b``, unpaired and
paired surrogate escapes, the header's and the document's keys) is passed to libFuzzer unless
``-dict=`` is given. Each input is read from memory with ``read_adapter`` (the checks of
``load_adapter``, in its order). The target fails (a crash that atheris records with its input) on:

- any exception other than ``AdapterFileError``, or one whose code is not a rule of spec 4.6;
- an accepted input that does not survive a write and a re-read unchanged;
- a sparse huge file read: when the input's header declares tensor data past the input's end (up
  to 1 TiB), the input is read again as the head of a file whose missing bytes are a hole
  (``fuzz_reader.HoleFile``); reading more than 64 MiB of the hole is a failure (spec 4.1);
- the oracles of tools/fuzz_reader.py that need no randomness: the document alone gets the
  verdict it gets in the file (steps 10-21, spec 4.6.3), and an accepted file's document is
  Unicode text (spec 4.1.1 rule 4).
"""
from __future__ import annotations

import importlib.util
import io
import json
import os
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from vera_ref import container
    from vera_ref.adapter import read_adapter, tensor_plan
    from vera_ref.errors import AdapterFileError
    from vera_ref.metadata import (CONFIG_KEY, FORMAT_KEY, FORMAT_NAME, SPEC_VERSION, VERSION_KEY, config_document,
                                   config_json)
    from vera_ref.resources import vectors_dir
    from vera_ref.rules import CODES

_spec = importlib.util.spec_from_file_location("fuzz_reader", Path(__file__).resolve().parent / "fuzz_reader.py")
fuzz = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz)

MAX_HOLE = 1 << 40
ORDER = {code: i for i, code in enumerate(CODES)}
TOKENS = [r"\u005b", r"\u002c", r"\u0022", r"\u007b", r"\udc80", r"\ud800", r"\ud83d\ude00", r"\\udc80",
          r"\\u005b", r"\\ud83d\\ude00", '"__metadata__"', '"vera_config"', '"extra_tensors"', '"data_offsets"',
          '"provenance"', '"base_model"', "[" * 16]  # the bytes libFuzzer may insert (issue 23's structures)


def _dict_line(i: int, token: str) -> str:
    """One libFuzzer dictionary entry: the token's bytes, '\\' and '"' escaped, others as \\xNN."""
    body = "".join("\\\\" if b == 0x5C else '\\"' if b == 0x22 else chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02x}"
                   for b in token.encode())
    return f't{i}="{body}"\n'


def _read(f, size: int):
    try:
        return "accepted", read_adapter(f, size)
    except AdapterFileError as exc:
        if exc.code not in CODES:
            raise AssertionError(f"code {exc.code!r} is not a rule of spec 4.6: {exc}") from None
        return "rejected", exc


def _declared_end(data: bytes) -> int | None:
    """The file size the input's header declares (8 + N + the largest data_offsets end), or None."""
    n = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8:8 + n])
        end = max(e["data_offsets"][1] for k, e in header.items() if k != "__metadata__")
    except Exception:  # noqa: BLE001 - not a header we can read: no sparse variant
        return None
    return 8 + n + end if isinstance(end, int) else None


def test_one_input(data: bytes) -> None:
    kind, value = _read(io.BytesIO(data), len(data))
    end = _declared_end(data) if len(data) >= 8 else None
    if end is not None and len(data) < end <= len(data) + MAX_HOLE:  # the same header over a hole
        _read(fuzz.HoleFile(data, end - len(data)), end)  # HoleRead (not AdapterFileError) fails the case
    if kind == "accepted" or ORDER[value.code] >= ORDER["E4.6.10.1"]:
        want = fuzz.document_verdict(data)
        got = None if kind == "accepted" or ORDER[value.code] > ORDER["E4.6.21.3"] else value.code
        if want is not False and want != got:
            raise AssertionError(f"the document alone gets {want}, in the file {got}")
    if kind != "accepted":
        return
    cfg = value.config
    json.dumps(config_document(cfg), ensure_ascii=False).encode("utf-8")  # UnicodeEncodeError: not Unicode text
    payload = container.to_bytes({FORMAT_KEY: FORMAT_NAME, VERSION_KEY: SPEC_VERSION, CONFIG_KEY: config_json(cfg)},
                                 tensor_plan(value))
    back = read_adapter(io.BytesIO(payload), len(payload))
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
    if not any(a.startswith("-dict=") for a in args[1:]):
        path = os.path.abspath("atheris-reader.dict")
        with open(path, "w") as f:
            f.write("".join(_dict_line(i, t) for i, t in enumerate(TOKENS)))
        args.insert(1, f"-dict={path}")
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
