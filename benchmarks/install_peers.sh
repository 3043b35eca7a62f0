#!/usr/bin/env bash
# Installs the peer libraries the benchmarks compare against. Several pin numpy<2 but run on numpy 2,
# so they are installed with --no-deps after their real runtime needs.
set -euo pipefail
PIP=${1:-.venv/bin/pip}
