# diffusers-notebook-kit. Two commands on a fresh clone: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_CPU := torch==2.13.0

.PHONY: install run test test-gpu lint strip tiny clean

## install: create .venv with the pinned stack (CPU torch first where there is no NVIDIA GPU)
install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then \
		$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH_CPU)"; fi
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (diffusers-notebook-kit)" >/dev/null
	touch $(STAMP)

## run: execute every notebook headless on the tiny models into runs/<timestamp>/
run: install
	$(PY) -m helpers.runner

## test: unit tests, notebook harness (papermill + nbval) and hygiene checks
test: install
	$(PY) -m pytest

## test-gpu: every notebook with its real defaults (Hub models, real sizes) on CUDA GPUs; skips without one
test-gpu: install
	$(PY) -m helpers.runner --real

## lint: ruff on helpers, tests and notebooks
lint: install
	$(PY) -m ruff check helpers tests notebooks bench community

## strip: remove outputs, execution counts and Colab cell metadata from committed notebooks
strip: install
	$(PY) -m helpers.strip notebooks/*.ipynb

## tiny: build the tiny random-weight models into .cache/tiny/
tiny: install
	$(PY) -m helpers.tiny .cache/tiny

clean:
	rm -rf .cache/tiny runs .pytest_cache
