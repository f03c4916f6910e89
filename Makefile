# `make demo` and `make test` each set up their own virtualenv on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
READY := $(VENV)/.ready

.PHONY: demo test lint typecheck clean

$(READY): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# pinned: the CPU wheel; an unpinned torch would pull a multi-GB CUDA build
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	# type stubs only: TensorRT itself cannot be installed here (its metapackage downloads from NVIDIA)
	$(BIN)/python -m pip install -q --no-deps tensorrt-stubs==10.13.0.35.1
	touch $(READY)

demo: $(READY)
	$(BIN)/rfdeploy demo

test: $(READY)
	$(BIN)/python -m pytest -q
	$(BIN)/python -m mypy

typecheck: $(READY)
	$(BIN)/python -m mypy

lint: $(READY)
	$(BIN)/ruff check rfdeploy tests

clean:
	rm -rf $(VENV) rfdeploy-out rfdeploy-demo .pytest_cache .mypy_cache .hypothesis
