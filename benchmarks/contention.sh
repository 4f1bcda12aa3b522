#!/usr/bin/env bash
# Contention: ila's unfused and fused B/32 models against the authors' code (inference, batch 2, identical weights),
# on a quiet machine and with one busy-loop process taking a core, at 2 and at 1 torch threads.
#   bash benchmarks/contention.sh ../ILA        (a checkout of github.com/Francis-Rings/ILA)
set -euo pipefail
cd "$(dirname "$0")/.."
src=${1:?give the folder of a checkout of github.com/Francis-Rings/ILA}
[ -f "$src/models/xclip.py" ] || { echo "contention.sh: $src has no models/xclip.py (a checkout of github.com/Francis-Rings/ILA)" >&2; exit 2; }
py=${PYTHON:-.venv/bin/python}
busy=
trap '[ -n "$busy" ] && kill "$busy" 2>/dev/null || true' EXIT
run() {
  local out
  out=$("$py" benchmarks/model_speed.py --preset ila-b32-8f-k400 --batch 2 --repeats 3 --iters 3 --skip-train \
        --rows fused "authors' code" --release-src "$src" "$@" 2>&1) || { echo "$out" | tail -n 1 >&2; exit 1; }
  grep -E "^\| (unfused|fused|authors)|threads:" <<< "$out"
}
for threads in 2 1; do
  echo "== quiet, --threads $threads"; run --threads "$threads"
  "$py" -c "while True: pass" & busy=$!
  echo "== one busy-loop process on the 2 cores, --threads $threads"; run --threads "$threads"
  kill "$busy"; busy=
done
