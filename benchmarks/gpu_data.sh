#!/usr/bin/env bash
# Issue 16, point 5, for a session with a GPU machine (one H200, 16 cores): at most ~9.5 minutes (the timeouts
# below add up to 585 s, under a 600-s command limit); each step that runs out of time is reported and skipped.
#   bash benchmarks/gpu_data.sh OUTDIR
# 0. the GPU-only tests of data.decoder=torchcodec-cuda (never run before: no GPU in the session that wrote it);
# 1. loader work per CPU-second at 340x256, the device recipe timed on the GPU, and torchcodec's CUDA decoding
#    (data.decoder=torchcodec-cuda: one process, wall-clock clips/s) where torchcodec and a GPU are present;
# 2. ila train's steps (ILA-B/16 8f, bf16, compiled, batch 32, all cores as loader workers, data.augment=device,
#    prepared gop-16 videos) against the same steps on a batch already in GPU memory, with GPU busy time;
# 3. the same with data.decoder=torchcodec-cuda (decoding on the GPU in the training process, workers 0). Not
#    compiled, to fit the time: its steps are slower than step 2's, so its loader-fed/in-memory ratio flatters it;
#    step 1's torchcodec-cuda clips per wall-second against B/16's 222 clips/s is the cleaner figure.
# Needs: the venv with ila installed (torchcodec, a CUDA build, and decord optional: missing ones are left out).
set -uo pipefail
out=${1:-gpu_data_out}
mkdir -p "$out"
out=$(cd "$out" && pwd)                    # absolute: the steps below run from the repository root
cd "$(dirname "$0")/.."
py=${PYTHON:-python}
step() {                                   # step NAME SECONDS CMD...: output to OUTDIR/NAME.txt, never fatal
    local name=$1 limit=$2; shift 2
    timeout "$limit" "$@" > "$out/$name.txt" 2>&1
    local rc=$?
    cat "$out/$name.txt"
    [ $rc -eq 0 ] || echo "== $name stopped (exit $rc; 124: ran past ${limit} s)" | tee -a "$out/$name.txt"
}
nvidia-smi --query-gpu=name,memory.total --format=csv > "$out/gpu.txt" 2>&1
"$py" -c "import torchcodec; print('torchcodec', torchcodec.__version__)" >> "$out/gpu.txt" 2>&1
cat "$out/gpu.txt"
step cuda_decode_tests 45 "$py" -m pytest tests/test_data_decoders.py -q -k cuda
step data_speed_gpu 150 "$py" benchmarks/data_speed.py --sizes 340x256 --gops 250 16 --frames 8 --clips 24 \
    --videos 2 --seconds 8
step data_e2e_b16 270 "$py" benchmarks/data_e2e.py --preset ila-b16-8f-k400 --batch 32 --steps 30 --warmup 5 \
    --videos 96
step data_e2e_b16_cuda_decode 120 "$py" benchmarks/data_e2e.py --preset ila-b16-8f-k400 --batch 32 --steps 10 \
    --warmup 3 --videos 64 --decoder torchcodec-cuda --no-compile
