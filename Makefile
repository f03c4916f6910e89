# `make demo` and `make test` each set up their own virtualenv on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
READY := $(VENV)/.ready
PIP := $(BIN)/python -m pip

# torch: the CPU build by default, from PyTorch's CPU wheel index where it answers within 5 s (no retries),
# else the plain pin from the configured index. `make TORCH_BUILD=cuda ...` (after `make clean`) installs
# the plain pin from the configured index, which on public PyPI is the CUDA build for Linux.
TORCH_VERSION ?= 2.13.0
TORCH_BUILD ?= cpu
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

# mmdet 3.3 needs mmcv < 2.2: real detectors are tested with mmcv-lite 2.1.0 and mmdet (pure Python, with their
# few extra dependencies) in an overlay that a second pytest run puts in front of the venv's mmcv-lite 2.2.
MMDET := .mmdet
# mmdeploy 1.3.1 (--config --mmdeploy) goes there too, with its few needs; --no-deps, as its protobuf<=3.20.2 pin
# is not needed to export.
MMDET_PACKAGES := mmdet==3.3.0 mmcv-lite==2.1.0 pycocotools==2.0.11 terminaltables==3.1.10 shapely==2.2.0 \
                  scipy==1.17.1 six==1.17.0 tqdm==4.70.1 \
                  mmdeploy==1.3.1 aenum==3.1.17 grpcio==1.85.3 multiprocess==0.70.19 dill==0.4.1 \
                  prettytable==3.19.0 wcwidth==0.9.4

.PHONY: demo test lint typecheck clean torch-cpu torch-cuda

$(READY): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(MAKE) --no-print-directory torch-$(TORCH_BUILD)
	$(PIP) install -q -e '.[dev]'
	# type stubs only: TensorRT itself cannot be installed here (its metapackage downloads from NVIDIA)
	$(PIP) install -q --no-deps tensorrt-stubs==10.13.0.35.1
	# a real tritonserver (only the Python backend) for tests/test_triton.py; --no-deps: its numpy<2 pin
	$(PIP) install -q --no-deps nvidia-pytriton==0.7.0
	touch $(READY)

torch-cpu:
	$(PIP) install -q --timeout 5 --retries 0 --index-url $(TORCH_CPU_INDEX) torch==$(TORCH_VERSION) \
	  || { echo "PyTorch's CPU index not reachable: torch==$(TORCH_VERSION) from the configured index"; \
	       $(PIP) install -q torch==$(TORCH_VERSION); }

torch-cuda:
	$(PIP) install -q torch==$(TORCH_VERSION)

$(MMDET)/.ready: $(READY) Makefile
	rm -rf $(MMDET)
	$(PIP) install -q --no-deps --target $(MMDET) $(MMDET_PACKAGES)
	touch $@

demo: $(READY)
	$(BIN)/rfdeploy demo

test: $(READY) $(MMDET)/.ready
	$(BIN)/python -m pytest -q
	PYTHONPATH=$(MMDET) $(BIN)/python -m pytest -q tests/test_mmdet_detectors.py
	$(BIN)/python -m mypy

typecheck: $(READY)
	$(BIN)/python -m mypy

lint: $(READY)
	$(BIN)/ruff check rfdeploy tests

clean:
	rm -rf $(VENV) $(MMDET) rfdeploy-out rfdeploy-demo .pytest_cache .mypy_cache .hypothesis
