"""int8 ONNX (issue 24, point 6): onnxruntime's dynamic quantization of ila's fp32 ONNX export, its drift and its
speed in onnxruntime on this CPU, against the fp32 graph (bf16 ONNX does not run in onnxruntime's CPU kernels).

    python benchmarks/onnx_precision.py --preset ila-b32-8f-k400 --threads 1 --out /tmp/onnx-precision

A preset model with random weights (seed 0; 400 class names: the Kinetics head's text features are computed at
export) is saved as a checkpoint and exported by `ila export --format onnx` (its own fp32 parity check), then
quantized by `onnxruntime.quantization.quantize_dynamic` (int8 weights per output channel, activations quantized on
each call: the MatMul/Gemm nodes). Both graphs run in one onnxruntime process, interleaved (`--repeats` rounds of
`--iters` calls each, the best round reported), on one random clip at batch 1: ms per clip, the largest
difference of the int8 logits from the fp32 graph's relative to the largest logit, and whether top-1 holds.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from ila import create_model
from ila.config import Config
from ila.engine.checkpoint import save_checkpoint
from ila.export import export
from ila.errors import UserError


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="ila-b32-8f-k400")
    p.add_argument("--out", default="/tmp/onnx-precision", help="a folder for the checkpoint and the two graphs")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--preprocess", action="store_true",
                   help="run onnxruntime's quant_pre_process (shape inference, graph optimisation) before quantizing")
    args = p.parse_args(argv)
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = create_model(args.preset)                    # the preset with fresh weights (seed 0)
    cfg = model.cfg
    names = [f"class {i}" for i in range(cfg.num_classes if cfg.head == "classifier" else 400)]
    save_checkpoint(out / "model.pt", model, Config(model=cfg), names)
    start = time.perf_counter()
    export(out / "model.pt", out / "fp32.onnx", "onnx")
    print(f"fp32 export and parity check: {time.perf_counter() - start:.0f} s", flush=True)
    start = time.perf_counter()
    source = out / "fp32.onnx"
    if args.preprocess:
        quant_pre_process(str(source), str(out / "fp32-pre.onnx"), skip_symbolic_shape=True)  # fails on this graph
        source = out / "fp32-pre.onnx"
    quantize_dynamic(str(source), str(out / "int8.onnx"), per_channel=True, weight_type=QuantType.QInt8)
    print(f"int8 dynamic quantization: {time.perf_counter() - start:.0f} s", flush=True)

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
    sessions = {k: ort.InferenceSession(str(out / f"{k}.onnx"), options, providers=["CPUExecutionProvider"])
                for k in ("fp32", "int8")}
    clip = torch.randn(1, cfg.num_frames, 3, cfg.image_resolution, cfg.image_resolution,
                       generator=torch.Generator().manual_seed(1)).numpy()
    logits = {k: torch.from_numpy(s.run(["logits"], {"video": clip})[0]) for k, s in sessions.items()}
    drift = ((logits["int8"] - logits["fp32"]).abs().max() / logits["fp32"].abs().max()).item()
    same = bool((logits["int8"].argmax(-1) == logits["fp32"].argmax(-1)).all())
    best = {k: float("inf") for k in sessions}
    for _ in range(args.repeats):
        for k, s in sessions.items():
            start = time.perf_counter()
            for _ in range(args.iters):
                s.run(["logits"], {"video": clip})
            best[k] = min(best[k], (time.perf_counter() - start) / args.iters)
    print(f"\n{args.preset}, batch 1, onnxruntime {ort.__version__}, {args.threads} thread(s), load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print("| graph | ms/clip | vs fp32 | logits drift vs fp32 graph | top-1 unchanged |")
    print("|---|---|---|---|---|")
    print(f"| fp32 (ila export) | {best['fp32'] * 1e3:.1f} | 1.00x | - | - |")
    label = "int8 (quantize_dynamic, per channel" + (", pre-processed)" if args.preprocess else ")")
    print(f"| {label} | {best['int8'] * 1e3:.1f} | {best['fp32'] / best['int8']:.2f}x | "
          f"{drift:.1e} | {same} |")


if __name__ == "__main__":
    try:
        main()
    except UserError as e:                      # a bad run, preset or set: one line, as ila's commands print it
        raise SystemExit(f"{os.path.basename(__file__)}: {e}") from None
    except OSError as e:                        # an output folder that cannot be written
        raise SystemExit(f"{os.path.basename(__file__)}: {e.strerror or e} ({e.filename})") from None
