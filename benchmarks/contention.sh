#!/usr/bin/env bash
# Contention: ila's unfused and fused B/32 models against the authors' code (inference, batch 2, identical weights),
# on a quiet machine and with one busy-loop process taking a core, at 2 and at 1 torch threads.
#   bash benchmarks/contention.sh ../ILA        (a checkout of github.com/Francis-Rings/ILA)
set -euo pipefail
cd "$(dirname "$0")/.."
src=${1:?give the folder of a checkout of github.com/Francis-Rings/ILA}
py=${PYTHON:-.venv/bin/python}
run() {
  "$py" benchmarks/model_speed.py --preset ila-b32-8f-k400 --batch 2 --repeats 3 --iters 3 --skip-train \
    --rows fused "authors' code" --release-src "$src" "$@" 2>&1 | grep -E "^\| (unfused|fused|authors)|threads:"
}
for threads in 2 1; do
  echo "== quiet, --threads $threads"; run --threads "$threads"
  "$py" -c "while True: pass" & busy=$!
  echo "== one busy-loop process on the 2 cores, --threads $threads"; run --threads "$threads"
  kill "$busy"
done
