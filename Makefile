# medops: the two commands are `make demo` and `make test`; everything else is optional.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export MEDOPS_HOME ?= $(CURDIR)/.medops
export MEDOPS_DATA_DIR ?= $(abspath $(CURDIR)/../shared/data)

.PHONY: demo test test-slow lint typecheck bench install system-deps triton clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## The main job on embedded defaults: no cluster, no GPU.
demo: $(STAMP)
	$(BIN)/medops demo

## Everything the tests need (Python, Debian packages, the Triton venv), then the tests.
test: $(STAMP) system-deps triton
	$(BIN)/pytest -m "not slow" -q

test-slow: $(STAMP) system-deps triton
	$(BIN)/pytest -m slow -q

system-deps:
	bash infra/install-system-deps.sh

triton:
	bash infra/triton/setup.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy medops services pipelines

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .medops .pytest_cache .mypy_cache .ruff_cache
