# One-command workflows. Each target creates .venv with the pinned dependencies when missing.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
ARGS ?=
PYTEST_ARGS ?=

.PHONY: help install train test test-fast lint bench bench-ops clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'
	@echo '  Hydra overrides pass through ARGS, e.g. make train ARGS="operator.kernel_size=5"'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP) ## create .venv with the pinned dependencies (done by every target when needed)

train: $(STAMP) ## train the default experiment (RedNet-26 on digits); ARGS="..." for Hydra overrides
	$(PY) -m involution.train $(ARGS)

test: $(STAMP) ## run the whole test suite (GPU tests run only where CUDA is present)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP) ## the suite without tests marked slow
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP) ## ruff check of the package, kernels and tests
	$(VENV)/bin/ruff check src kernels tests

bench: bench-ops ## all benchmarks; results go to docs/benchmarks.md

bench-ops: $(STAMP) ## operator benchmark (per backend, vs depthwise conv) -> docs/benchmarks.md
	$(PY) -m involution.bench.ops $(ARGS)

clean: ## remove caches and run outputs (keeps .venv; rm -rf .venv for a full reset)
	rm -rf outputs multirun wandb .pytest_cache .ruff_cache build dist src/*.egg-info
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +
