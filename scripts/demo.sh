#!/usr/bin/env bash
# Install ila into .venv and run the CPU demo: ILA against frame averaging and divided attention, from scratch and
# with a frozen pretrained image tower, on the flat generated set. 12 epochs (the recipe's 20 would take about
# 18 minutes on 2 cores; 12 stay under 12); any option given here wins, e.g. `bash scripts/demo.sh --epochs 20`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ila demo --epochs 12 "$@"
