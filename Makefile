# Fresh machine -> working environment -> run. `make demo` and `make test` do all set-up.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.pap-installed
# CPU machines take torch's CPU build; where nvidia-smi works, the image's CUDA torch is used.
TORCH_CPU := torch==2.13.0
NPROC  ?= 4

.PHONY: install demo test test-all test-fast gpu-check serve-check corpus clean

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

# The main job on the embedded default, 4 gloo processes on CPU; each step resumes if interrupted:
# train a 5.0M-parameter source (configs/tiny.yaml, TP=2 x PP=2), prune it to half while
# pretraining (configs/tiny_pap.yaml, TP=2 x DP=2), plot the pruning, export the pruned
# model to Hugging Face and generate with transformers.
TORCHRUN := OMP_NUM_THREADS=1 PYTHONWARNINGS=ignore $(VENV)/bin/torchrun --nproc-per-node $(NPROC)
demo: corpus
	$(TORCHRUN) -m pap.train --config configs/tiny.yaml
	$(TORCHRUN) -m pap.train --config configs/tiny_pap.yaml
	$(PY) -m pap.plot runs/tiny_pap
	$(PY) -m pap.convert mcore-to-hf --ckpt runs/tiny_pap --out runs/tiny_pap/hf --tokenizer data/embedded --overwrite
	PYTHONWARNINGS=ignore $(PY) -m pap.generate runs/tiny_pap/hf
	@echo "runs/tiny (source), runs/tiny_pap (pruned: checkpoints, pruning_events.jsonl, pruning.png, hf/)"

# What CI runs: everything but the tests marked `long` (the rest of the layout and dtype
# matrices whose representatives run here), within CI's time.
test: $(STAMP)
	$(PY) -m pytest -q -m "not long" tests

# The whole suite, `long` tests included.
test-all: $(STAMP)
	$(PY) -m pytest -q tests

# Quick subset for local iteration.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

# The real-dtype checks on one GPU (bf16 masters, rounds, resume, freed memory, step time at
# SmolLM-1.7B's layer shape): a few minutes; prints CHECK lines (docs/BENCHMARKS.md).
gpu-check: $(STAMP)
	$(PY) bench/gpu_check.py

# Pruned models served by vLLM: makes vLLM's own environment on first use (several GB,
# minutes; pap/serve/vllm_env.py), then checks the four Nemotron-NAS exports and the plain
# Llama one against transformers and pap (tests/hf/test_serving.py, long cases included).
# SERVE_CASES picks some by name (pytest -k), as CI does: `make serve-check SERVE_CASES=adaptive`;
# SERVE_VLLM=0 checks transformers against pap only.
SERVE_CASES ?=
SERVE_VLLM ?= 1
serve-check: $(STAMP)
	PAP_SERVE_VLLM=$(SERVE_VLLM) $(PY) -m pytest -q -s tests/hf/test_serving.py $(if $(SERVE_CASES),-k "$(SERVE_CASES)")

clean:
	rm -rf $(VENV) data/embedded runs .pytest_cache
