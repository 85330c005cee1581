# One-command workflows. Each target creates .venv with the pinned dependencies when missing.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
ARGS ?=
PYTEST_ARGS ?=
# pytest-xdist workers for make test / test-fast (0: one process). Two halve the suite's time even
# on 2 cores: much of it is single-threaded (interpreter start-up, imports, Numba compilation).
# loadscope keeps each module on one worker, so module fixtures (a small sweep, say) run once.
TEST_WORKERS ?= 2
XDIST := -n $(TEST_WORKERS) $(if $(filter 0,$(TEST_WORKERS)),,--dist loadscope)

.PHONY: help install train resume eval test test-fast lint bench bench-ops bench-models bench-detection cuda-report clean sweep summarize dashboard search lab notebooks

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

resume: $(STAMP) ## continue the newest unfinished run under outputs/train (its own overrides; ARGS="..." added)
	$(PY) -m involution.train resume=latest $(ARGS)

# Evaluate a checkpoint: ours (<run dir>/checkpoints/*.ckpt, it knows its architecture) or a state
# dict such as an official mmcls RedNet (give its architecture), e.g.
#   make eval CKPT=outputs/train/<date>/<time>/checkpoints/last.ckpt
#   make eval CKPT=rednet50.pth ARGS="model=rednet50 data=imagenet data.data_dir=/data/imagenet"
# The path is quoted for Hydra, so Lightning names such as epoch=3-step=40.ckpt pass as they are.
CKPT ?=

eval: $(STAMP) ## evaluate CKPT=<checkpoint> on the test split (ARGS="split=val data=..."); JSON in its run dir
	$(PY) -m involution.eval $(if $(CKPT),"ckpt_path='$(CKPT)'") $(ARGS)

test: $(STAMP) ## run the whole test suite (GPU tests run only where CUDA is present; TEST_WORKERS=2)
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

test-fast: $(STAMP) ## the suite without tests marked slow
	$(PY) -m pytest $(XDIST) -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP) ## ruff check of the package, kernels and tests
	$(VENV)/bin/ruff check src kernels tests

# QUICK=1: a smoke of every benchmark in about 3 minutes here (operators: 3 repetitions, no
# torch.compile; models: 4 models, batch 8, eager, one process each; detection: the three Faster
# R-CNNs at 256x256, one process each).
QUICK ?=
bench: bench-ops bench-models bench-detection cuda-report ## all benchmarks -> docs/benchmarks.md (QUICK=1: ~3 min)

bench-ops: $(STAMP) ## operator benchmark (per backend, vs depthwise conv) -> docs/benchmarks.md
	$(PY) -m involution.bench.ops $(if $(QUICK),--reps 3 --warmup 1 --no-compile) $(ARGS)

# ARGS go to the model benchmark only when it is the target named (as for cuda-report)
bench-models: $(STAMP) ## models vs torchvision resnet50: train step, inference, memory -> docs/benchmarks.md
	$(PY) -m involution.bench.models $(if $(QUICK),--quick) $(if $(filter bench-models,$(MAKECMDGOALS)),$(ARGS))

# ARGS go to the detection benchmark only when it is the target named (as for bench-models)
bench-detection: $(STAMP) ## RedNet-50-FPN detectors/Semantic FPN, conv vs involution neck vs torchvision -> docs/benchmarks.md
	$(PY) -m involution.bench.detection $(if $(QUICK),--quick) $(if $(filter bench-detection,$(MAKECMDGOALS)),$(ARGS))

# ARGS go to the report only when it is the target named (make bench ARGS="--reps 25" is bench-ops')
cuda-report: $(STAMP) ## CUDA kernels' registers/spills/occupancy via ptxas (no GPU) -> docs/benchmarks.md
	$(PY) -m involution.bench.cuda_resources $(if $(filter cuda-report,$(MAKECMDGOALS)),$(ARGS))

# Sweeps (conf/sweep/*.yaml): Hydra multiruns under multirun/<task>/<date>/<time>/<job>; the summary
# table and "N ok, M failed" are printed at the end (exit status 1 when a job failed). On digits
# (the default) the sweep uses SWEEP_SCHEDULE, a short schedule (the digits are 8x8 scans, so 16x16
# inputs lose nothing; 16 jobs in well under 30 minutes on 2 cores, val top-1 > 90% each); naming
# data= or experiment= in ARGS drops it, e.g.
#   make sweep SWEEP=group_channels ARGS="experiment=cifar10 hydra/launcher=joblib"
# SWEEP=neck_operator (backbone x neck operator of Faster R-CNN on the digit scenes) has its own
# short schedule, SWEEP_SCHEDULE_neck_operator (4 jobs of about 3 minutes here); the classification
# sweeps run on detection with ARGS="experiment=detection_digits" (the experiment's schedule).
SWEEP ?= kernel_reduction
SWEEP_SCHEDULE ?= data.image_size=16 trainer.max_epochs=12
SWEEP_SCHEDULE_neck_operator ?= trainer.max_epochs=2 data.train_size=800
SEARCH ?= digits_optuna
DIR ?=

# a key of the sweep's schedule that ARGS sets too is left out (the command shows each key once)
ARG_KEYS = $(foreach arg,$(ARGS),$(firstword $(subst =, ,$(arg)))=%)
sweep: $(STAMP) ## Hydra multirun ablation SWEEP=kernel_reduction|group_channels|operator|neck_operator; ARGS="..."
	$(PY) -m involution.train sweep=$(SWEEP) $(if $(filter data=% experiment=%,$(ARGS)),,$(filter-out $(ARG_KEYS),$(or $(SWEEP_SCHEDULE_$(SWEEP)),$(SWEEP_SCHEDULE)))) $(ARGS)

summarize: $(STAMP) ## (re)build a multirun's summary table: make summarize DIR=multirun/... (default latest)
	$(PY) -m involution.runs summarize $(DIR)

dashboard: $(STAMP) ## a sweep's charts (PNG + one HTML page) and W&B workspace: make dashboard DIR=multirun/... (default latest)
	$(PY) -m involution.runs dashboard $(DIR) $(ARGS)

search: $(STAMP) ## Optuna search SEARCH=digits_optuna (conf/hparams_search); ARGS="..."
	$(PY) -m involution.train hparams_search=$(SEARCH) $(ARGS)

# Jupyter Lab on .venv: notebooks/ holds the analysis notebooks (ablation results, generated kernels,
# operator costs). jupyterlab is installed into .venv on first use; JUPYTER_PATH puts the venv's
# "python3" kernel ahead of any user-level one, so the notebooks run on the project's environment
# (as root, e.g. in a container, --allow-root is added).
LAB_REQUIREMENT ?= jupyterlab==4.6.6

lab: $(STAMP) ## Jupyter Lab on the project's .venv (installs jupyterlab on first use); ARGS="..."
	@$(PY) -c "import jupyterlab" 2>/dev/null || $(PY) -m pip install --quiet "$(LAB_REQUIREMENT)"
	JUPYTER_PATH="$(abspath $(VENV))/share/jupyter" $(VENV)/bin/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) $(ARGS)

# Every notebook headless (nbclient, as `jupyter execute`): executed copies in outputs/notebooks/,
# figures in outputs/figures/<notebook>/. What they read: CHECKPOINT=, CONV_CHECKPOINT=, MULTIRUN=
# (default: the best finished single run of each operator under outputs/, the newest multirun).
NB_VARS := CHECKPOINT CONV_CHECKPOINT MULTIRUN FIGDIR
notebooks: $(STAMP) ## run every notebook headless; CHECKPOINT=... MULTIRUN=... name what they read
	$(foreach var,$(NB_VARS),$(if $($(var)),INVOLUTION_NB_$(var)="$(abspath $($(var)))")) \
	$(PY) -m involution.analysis.nbtools --execute notebooks/*.ipynb

clean: ## remove caches and run outputs (keeps .venv; rm -rf .venv for a full reset)
	rm -rf outputs multirun wandb .pytest_cache .ruff_cache build dist src/*.egg-info
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +
