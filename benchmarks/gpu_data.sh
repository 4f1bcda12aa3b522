#!/usr/bin/env bash
# Issue 16, point 5, for a session with a GPU machine (about 8 minutes on one H200 with 16 cores):
#   bash benchmarks/gpu_data.sh OUTDIR
# 1. loader work per CPU-second at 340x256 (and the device recipe timed on the GPU);
# 2. ila train's steps (ILA-B/16 8f, bf16, compiled, batch 32, all cores as loader workers, data.augment=device,
#    prepared gop-16 videos) against the same steps on a batch already in GPU memory, with GPU busy time.
# Needs: the venv with ila installed (torchcodec and decord optional: missing ones are left out).
set -euo pipefail
out=${1:-gpu_data_out}
mkdir -p "$out"
cd "$(dirname "$0")/.."
py=${PYTHON:-python}
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
timeout 240 "$py" benchmarks/data_speed.py --sizes 340x256 --gops 250 16 --frames 8 --clips 24 --videos 2 \
    --seconds 8 2>&1 | tee "$out/data_speed_gpu.txt" || echo "data_speed stopped (timeout or error)"
timeout 420 "$py" benchmarks/data_e2e.py --preset ila-b16-8f-k400 --batch 32 --steps 30 --warmup 5 \
    --videos 96 2>&1 | tee "$out/data_e2e_b16.txt" || echo "data_e2e stopped (timeout or error)"
