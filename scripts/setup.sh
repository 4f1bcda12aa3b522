#!/usr/bin/env bash
# Create .venv in the checkout and install ila into it (CPU; torch comes from the local wheel cache when present).
# Usage: scripts/setup.sh [extras]   e.g. scripts/setup.sh dev
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -c "import torch, torchvision" 2>/dev/null || \
  .venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
extras=${1:+[$1]}
.venv/bin/python -m pip install -q -e ".${extras}"
