# Fresh machine -> working environment -> run. `make demo` and `make test` do all set-up.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.pap-installed
# CPU machines take torch's CPU build; where nvidia-smi works, the image's CUDA torch is used.
TORCH_CPU := torch==2.13.0
NPROC  ?= 4

.PHONY: install demo test test-fast corpus clean

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if ! command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q $(TORCH_CPU); fi
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

data/embedded/stdlib_text_document.meta.json: $(STAMP)
	$(PY) -m data_prep.embedded_corpus --output data/embedded

corpus: data/embedded/stdlib_text_document.meta.json

# Trains configs/tiny.yaml (TP=2 x PP=2, 4 gloo processes on CPU); resumes if interrupted.
demo: corpus
	OMP_NUM_THREADS=1 PYTHONWARNINGS=ignore $(VENV)/bin/torchrun --nproc-per-node $(NPROC) -m pap.train --config configs/tiny.yaml
	@echo "checkpoints and TensorBoard logs: runs/tiny  (tensorboard --logdir runs/tiny/tensorboard)"

# The whole suite, slow tests included (what CI runs).
test: $(STAMP)
	$(PY) -m pytest -q tests

# Quick subset for local iteration.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

clean:
	rm -rf $(VENV) data/embedded runs .pytest_cache
