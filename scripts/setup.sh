#!/usr/bin/env bash
# Create .venv in the checkout and install ila into it, saying what each step does while it runs.
# Usage: scripts/setup.sh [extras]   e.g. scripts/setup.sh export, or dev,docs   (extras: dev, docs, export, serve, torchcodec, wandb)
# PyTorch: an installed torch is kept; otherwise pip takes torch 2.14.1 from a local wheel cache where there is one,
# else from PyPI, whose Linux x86_64 wheel is the CUDA build (with ~16 nvidia packages, ~5.9 GB in .venv). For a
# CPU-only torch (~0.7 GB), install it first:  TORCH_INDEX=https://download.pytorch.org/whl/cpu scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
step() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
if [ ! -x .venv/bin/python ]; then
  step "creating .venv with $($PY --version 2>&1)"
  "$PY" -m venv .venv
fi
step "upgrading pip"
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  step "torch $(.venv/bin/python -c 'import torch; print(torch.__version__)') already installed"
else
  step "installing torch 2.14.1 and torchvision 0.29.1 (the largest step: minutes from PyPI; see the header)"
  torch_install=(.venv/bin/python -m pip install ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} torch==2.14.1 torchvision==0.29.1)
  if [ -t 1 ]; then   # a terminal: pip's own progress bars, the download of each large wheel as it goes
    "${torch_install[@]}" --progress-bar on || true
  else                # a log: one line per package
    "${torch_install[@]}" --progress-bar off | grep -E --line-buffered '^(Collecting|Downloading|Installing|Successfully)' || true
  fi
  .venv/bin/python -c "import torch, torchvision" || { echo "[setup] torch did not install; see pip's output above" >&2; exit 1; }
fi
extras=${1:+[$1]}
step "installing ila${extras} and its dependencies"
.venv/bin/python -m pip install -e ".${extras}" | grep -E --line-buffered '^(Collecting|Installing|Successfully)' || true
.venv/bin/python -c "import ila" || { echo "[setup] ila did not install; see pip's output above" >&2; exit 1; }
step "done: .venv/bin/ila $(.venv/bin/python -c 'import ila; print(ila.__version__)') ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__, "CUDA build" if torch.version.cuda else "CPU build")'))"
