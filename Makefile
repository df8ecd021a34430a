# diffusers-notebook-kit. Two commands on a fresh clone: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BROWSER_STAMP := $(VENV)/.browser-installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
TORCH_CPU := torch==2.13.0
TORCH_INDEX ?=  # e.g. https://download.pytorch.org/whl/cpu where PyPI's torch would be a CUDA build

.PHONY: install run test test-browser test-gpu bench bench-gpu lint strip tiny release clean

## install: create .venv with the pinned stack (CPU torch first where there is no NVIDIA GPU)
install: $(STAMP)

$(STAMP): requirements.txt requirements-gpu.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then \
		$(PY) -m pip install --quiet --disable-pip-version-check $(if $(strip $(TORCH_INDEX)),--index-url $(TORCH_INDEX)) \
			"$(TORCH_CPU)"; fi
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-gpu.txt; fi
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (diffusers-notebook-kit)" >/dev/null
	touch $(STAMP)

## run: execute every notebook headless on the tiny models into runs/<timestamp>/
run: install
	$(PY) -m tools.runner

## test: unit tests, notebook harness (papermill + nbval) and hygiene checks
test: install
	$(PY) -m pytest

## test-browser: notebook 02 run through JupyterLab's UI in headless Chromium (installs chromium, jupyterlab, playwright)
test-browser: $(BROWSER_STAMP)
	$(PY) -m pytest browser -p no:cacheprovider

$(BROWSER_STAMP): requirements-browser.txt $(STAMP)
	test -x /usr/bin/chromium || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-browser.txt
	touch $(BROWSER_STAMP)

## test-gpu: bitsandbytes on the tiny models (tests/gpu), then every notebook with its real defaults on CUDA GPUs; skips without one
test-gpu: install
	$(PY) -m pytest tests/gpu -q
	$(PY) -m tools.runner --real

## bench: CPU benchmarks (kit overhead, load throughput, from_pipe memory, notebook suite, imports, quantized weight memory)
bench: install
	$(PY) bench/run.py

## bench-gpu: GPU benchmarks (time to first image, s/image, peak VRAM); skips without a CUDA GPU
bench-gpu: install
	$(PY) bench/gpu.py

## lint: ruff on helpers, tests and notebooks
lint: install
	$(PY) -m ruff check helpers tests notebooks bench community browser

## strip: remove outputs, execution counts and Colab cell metadata from committed notebooks
strip: install
	$(PY) -m tools.strip notebooks/*.ipynb

## release: set the kit version everywhere (helpers, notebooks, badges, README, CHANGELOG): make release VERSION=0.2.0
release: install
	$(PY) -m tools.release $(VERSION)

## tiny: build the tiny random-weight models into .cache/tiny/
tiny: install
	$(PY) -m tools.tiny .cache/tiny

clean:
	rm -rf .cache/tiny runs .pytest_cache
