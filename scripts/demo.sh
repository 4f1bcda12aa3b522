#!/usr/bin/env bash
# Install ila into .venv and run the CPU demo: ILA against frame averaging and divided attention.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ila demo "$@"
