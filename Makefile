# Three front-door commands (README):  make demo   |   make lab   |   make test
# Both create .venv with the CPU build of torch on CPU machines (an unpinned torch pulls a multi-GB CUDA build).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# On a GPU machine: make demo TORCH="torch" (any CUDA build >= 2.6)
TORCH ?= torch==2.13.0

.PHONY: install dev demo lab test lint format browser clean bench gpu-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e .

dev: $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"

demo: install
	$(BIN)/workbench demo

# JupyterLab from the venv, on 127.0.0.1 only, over the project, opening the quickstart notebook (Ctrl-C ends it).
# The venv's bin on PATH: the notebooks' kernels call the `workbench` and `accelerate` commands.
LAB_PORT ?= 8888
lab: install
	$(BIN)/pip install -q -e ".[lab]"
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/jupyter lab --ip 127.0.0.1 --port $(LAB_PORT) \
		--ServerApp.root_dir="$(CURDIR)" notebooks/00_quickstart.ipynb

lint: dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The venv's bin on PATH: tests and notebooks call the `workbench` and `accelerate` commands, as a user would.
# Three pytest workers, one file each at a time (module fixtures stay shared): much of a multi-process test is
# spent starting processes and waiting on them, so files side by side keep both cores busy.
PYTEST_WORKERS ?= 3
test: lint
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile tests --nbval-lax notebooks

format: dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install
	$(BIN)/python benchmarks/overhead.py

# Every GPU path in one prepared run (about 8 minutes on one H200; no network): the table, and gpu_check.json
# under $$OUT or runs/. `python benchmarks/gpu_check.py --dry-run` lists the steps anywhere.
gpu-check: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) runs .pytest_cache
