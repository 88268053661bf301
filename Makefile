# Quickstart: `make demo` (the quickstart ablation) and `make test` (run the tests).
# Both create .venv and install what they need on first use.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0

# Never pull a multi-GB CUDA build onto a machine without a GPU: on Linux without nvidia-smi,
# install the CPU wheel, from pip's local wheel folders (find-links) when one holds it, else
# from PyTorch's CPU index. Override with `make TORCH_PIP_ARGS=...`.
LOCAL_CPU_WHEEL := $(shell for d in $$($(PYTHON) -m pip config get global.find-links 2>/dev/null); do ls $$d/torch-$(TORCH_VERSION)+cpu-*.whl 2>/dev/null; done | head -n 1)
NEEDS_CPU_INDEX := $(shell [ "$$(uname -s)" = Linux ] && ! command -v nvidia-smi >/dev/null 2>&1 && echo yes)
ifeq ($(LOCAL_CPU_WHEEL),)
ifeq ($(NEEDS_CPU_INDEX),yes)
TORCH_PIP_ARGS ?= --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple
endif
endif

.PHONY: demo test lint format clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "torch==$(TORCH_VERSION)" $(TORCH_PIP_ARGS)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

# A fixed --out: running it again skips finished runs and resumes interrupted ones.
demo: $(STAMP)
	$(BIN)/ponderkit ablate experiments/quickstart.yaml --out runs/quickstart --jobs 2

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check core plugins tests benchmarks
	$(BIN)/ruff format --check core plugins tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format core plugins tests benchmarks
	$(BIN)/ruff check --fix core plugins tests benchmarks

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis
