# Quickstart: `make demo` (the quickstart ablation) and `make test` (run the tests).
# Both create .venv and install what they need on first use.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0

# Extra pip arguments for the torch install. On a machine without an NVIDIA GPU whose pip would
# otherwise fetch the multi-GB CUDA build, point them at PyTorch's CPU wheel index, e.g.
# `make test TORCH_PIP_ARGS="--index-url <PyTorch's CPU wheel index>"` (the address is in
# PyTorch's installation guide); machines whose pip is configured with a local CPU wheel need none.
TORCH_PIP_ARGS ?=

.PHONY: demo test lint format clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "torch==$(TORCH_VERSION)" $(TORCH_PIP_ARGS)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

# A fixed --out: running it again skips finished runs and resumes interrupted ones.
demo: $(STAMP)
	$(BIN)/ponderkit ablate experiments/quickstart.yaml --out runs/quickstart --jobs 2

# Two pytest-xdist workers, one test file each at a time (a module's shared fixtures built once);
# tests/conftest.py gives each worker one intra-op thread. `make test TEST_WORKERS=0` runs
# them in one process.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check core plugins tests benchmarks
	$(BIN)/ruff format --check core plugins tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format core plugins tests benchmarks
	$(BIN)/ruff check --fix core plugins tests benchmarks

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis
