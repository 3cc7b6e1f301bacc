# `make search` and `make test` set everything up on a fresh machine; each step skips work already done.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The offline CIFAR-10 / NB201 copy next to the checkout, when there is one; otherwise ~/.cache/nas/data.
SHARED_DATA := $(abspath ../shared/data)
export NAS_DATA_DIR ?= $(if $(wildcard $(SHARED_DATA)/cifar-10-batches-py),$(SHARED_DATA),)
export HF_HUB_OFFLINE := 1

.PHONY: setup search test lint bench clean system-deps

setup: $(VENV)/.installed

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# torch first and pinned: the CPU wheel on local disk; an unpinned torch pulls a CUDA build.
$(VENV)/.torch: $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	touch $@

$(VENV)/.installed: $(VENV)/.torch pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

search: setup
	$(BIN)/nas search --space nasnet

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m experiments.report --check

# PostgreSQL and Chromium for the real-service tests: installed when missing and this machine allows it; otherwise
# the script names the tests that will skip and the command that brings them in (pytest's -rs lists every skip).
system-deps:
	@bash tests/system-deps.sh

test: lint system-deps
	$(BIN)/pytest -q -rs --durations=15

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
