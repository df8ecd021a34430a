# diffusers-notebook-kit. Two commands on a fresh clone: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BROWSER_STAMP := $(VENV)/.browser-installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
TORCH_CPU := torch==2.13.0
TORCH_INDEX ?=# a CPU wheel index to try first; without a GPU the PyTorch CPU index is tried anyway
PIP := $(PY) -m pip install --disable-pip-version-check --no-compile --progress-bar on  # compiled once below, in parallel

.PHONY: help install run test test-core test-colab test-cuda-sim test-browser test-gpu bench bench-gpu bench-colab sweep lint strip tiny release golden clean

## help: list the targets (from the `##` comments in this Makefile)
help:
	@sed -n 's/^## \([a-z-]*\): /  make \1\t/p' $(MAKEFILE_LIST) | expand -t 22

## install: create .venv with the pinned stack (without an NVIDIA GPU: a CPU torch, announced before download)
install: $(STAMP)

$(STAMP): requirements.txt requirements-gpu.txt pyproject.toml tools/install_torch.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "== torch: a CPU build unless there is an NVIDIA GPU (tools/install_torch.py says what it fetches)"
	$(PY) tools/install_torch.py "$(TORCH_CPU)" "$(strip $(TORCH_INDEX))"
	@echo "== the pinned stack from requirements.txt (diffusers, transformers, notebook runtime, test tools)"
	$(PIP) -r requirements.txt
	@echo "== the kit itself (editable) and its Jupyter kernel"
	$(PIP) --quiet --no-deps --no-build-isolation -e .
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "== GPU-only backends (requirements-gpu.txt: bitsandbytes)"; $(PIP) -r requirements-gpu.txt; fi
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (diffusers-notebook-kit)" >/dev/null
	@echo "== byte-compile the venv on every core: with PYTHONDONTWRITEBYTECODE=1 nothing writes .pyc later, and each kernel would recompile torch/diffusers/transformers"
	$(PY) -m compileall -q -j 0 $(VENV)/lib >/dev/null || echo "   (some files did not byte-compile; they compile on import)"
	touch $(STAMP)

## run: execute every notebook headless on the tiny models into runs/<timestamp>/
run: install
	$(PY) -m tools.runner

TEST_WORKERS ?= 2
## test: unit tests, notebook harness (papermill, each notebook run once per parameter set) and hygiene checks
test: install
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadscope --durations=25

PY313 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.13*/bin/python) $(shell command -v python3.13))
CORE_PYTHONS ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.11*/bin/python) $(shell command -v python3.11)) $(PY313)
## test-core: the core unit tests (no torch) on Python 3.11 and 3.13 in small venvs (packaging + pytest only)
test-core:
	$(PYTHON) -m tools.colab.core_tests $(CORE_PYTHONS)

## test-colab: every notebook's setup cell, then the notebook, on a fresh copy of Colab's published package set (Python 3.13, CPU)
test-colab: install
	$(PY) -m tools.colab.simulate --venv .cache/colab-venv --python "$(PY313)" --write bench/COLAB.md

## sweep: the reliability sweep (100+ hostile runs of the notebooks) into bench/RELIABILITY.md; make test runs a subset
sweep: install
	$(PY) -m tools.sweep --write bench/RELIABILITY.md >/dev/null

## test-cuda-sim: the unit tests on a simulated CUDA host (torch reports one T4): tests that expect the CPU pin it
test-cuda-sim: install
	KIT_SIMULATE_CUDA=1 $(PY) -m pytest --deselect tests/test_notebooks.py -p no:cacheprovider

## test-browser: notebook 02 run through JupyterLab's UI in headless Chromium (installs chromium, jupyterlab, playwright)
test-browser: $(BROWSER_STAMP)
	$(PY) -m pytest browser -p no:cacheprovider

$(BROWSER_STAMP): requirements-browser.txt $(STAMP)
	test -x /usr/bin/chromium || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }
	$(PIP) -r requirements-browser.txt
	touch $(BROWSER_STAMP)

## test-gpu: bitsandbytes on the tiny models (tests/gpu), then every notebook with its real defaults on CUDA GPUs; skips without one
test-gpu: install
	$(PY) -m pytest tests/gpu -q
	$(PY) -m tools.runner --real

## bench: CPU benchmarks (kit overhead, load throughput, from_pipe memory, notebook suite, imports with and without .pyc, quantized weight memory)
bench: install
	PYTHONPATH=. $(PY) bench/run.py

## bench-gpu: GPU benchmarks (time to first image, s/image, peak VRAM); skips without a CUDA GPU
bench-gpu: install
	PYTHONPATH=. $(PY) bench/gpu.py

## bench-colab: the Colab simulation's forced-restart path 20 times; counts runs whose notebook shows the reason
bench-colab: install
	PYTHONPATH=. $(PY) bench/colab_restart.py --runs 20

## lint: ruff on helpers, tests and notebooks
lint: install
	$(PY) -m ruff check helpers tests notebooks bench community browser

## strip: remove outputs, execution counts and Colab cell metadata from committed notebooks
strip: install
	$(PY) -m tools.strip notebooks/*.ipynb

## release: set the kit version everywhere (helpers, notebooks, badges, README, CHANGELOG): make release VERSION=0.2.0
release: install
	$(PY) -m tools.release $(VERSION)

## golden: rewrite tests/golden/load_plans.md (every shipped model x hardware profile); review the diff, commit it
golden: install
	KIT_REGENERATE_GOLDEN=1 $(PY) -m pytest tests/test_planning.py -q -k golden

## tiny: build the tiny random-weight models into .cache/tiny/
tiny: install
	$(PY) -m tools.tiny .cache/tiny

## families: run every tiny family through plain diffusers and notebook 02/07; writes docs/FAMILIES.md
.PHONY: families
families: install
	$(PY) -m tools.families

## clean: remove the tiny models, run folders and pytest cache
clean:
	rm -rf .cache/tiny runs .pytest_cache
