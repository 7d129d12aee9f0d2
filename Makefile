# One command for the main job (`make demo`) and one for the tests (`make test`); each
# creates the virtual environment it needs on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ABC := $(VENV)/bin/abc
# torchsort ships only sources; nvcc on PATH makes its setup try a CUDA build that fails
# against the CPU torch, so it is built with a PATH that has no nvcc on it.
NO_NVCC_PATH := $(shell $(PYTHON) scripts/path_without.py nvcc 2>/dev/null || echo "$$PATH")

.PHONY: setup demo test test-all lint format bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	# Pinned CPU build of torch first, so nothing below pulls a CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	PATH="$(NO_NVCC_PATH)" $(PY) -m pip install --quiet --no-build-isolation torchsort==0.1.10
	touch $@

demo: setup
	$(PY) scripts/demo.py

test: setup
	$(PY) -m pytest -m "not slow"

test-all: setup
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff format --check autobuild_dsl tests benchmarks scripts
	$(VENV)/bin/ruff check autobuild_dsl tests benchmarks scripts
	$(ABC) fmt --check spaces/*.abs

format: setup
	$(VENV)/bin/ruff format autobuild_dsl tests benchmarks scripts
	$(VENV)/bin/ruff check --fix autobuild_dsl tests benchmarks scripts

bench: setup
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info out
