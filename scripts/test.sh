#!/usr/bin/env bash
# Install ila with its test and docs dependencies into .venv and run the whole test suite (the docs site is built
# in strict mode and every runnable block of README.md and docs/ is executed by tests/test_docs.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev,docs
.venv/bin/python -m pytest "$@"
