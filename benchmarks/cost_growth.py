"""How cost grows with the number of frames: GFLOPs and CPU time per clip for each temporal variant.

    python benchmarks/cost_growth.py --preset ila-b32-8f-k400 --frames 8 16 32

GFLOPs: torch.utils.flop_counter (2 per multiply-add), one view, eval, 3 cached class-name features.
Time: median of `--iters` inference passes of one clip (the fused model, `ila.fuse`), float32, on this machine's CPU threads,
measured in one run so the variants share the machine's state.
"""
from __future__ import annotations

import argparse
import time

import torch

from ila.info import count_flops
from ila.models.ila import ILAModel
from ila.models.registry import temporal_variants
from ila.presets import get_preset

VARIANTS = temporal_variants()          # every registered temporal variant, cost references included


def seconds_per_clip(cfg, iters: int) -> float:
    model = ILAModel(cfg).fuse()
    video = torch.randn(1, cfg.num_frames, 3, cfg.image_resolution, cfg.image_resolution)
    text = torch.randn(3, cfg.embed_dim) if cfg.head == "text" else None
    times = []
    with torch.inference_mode():
        model(video, text_features=text)
        for _ in range(iters):
            start = time.perf_counter()
            model(video, text_features=text)
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="ila-b32-8f-k400")
    p.add_argument("--frames", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--no-time", action="store_true", help="GFLOPs only")
    args = p.parse_args(argv)
    print(f"{args.preset}, threads={torch.get_num_threads()}, torch {torch.__version__}")
    head = " | ".join(f"T={t} GFLOPs | T={t} s/clip" for t in args.frames)
    print(f"| variant | {head} | GFLOPs x{args.frames[-1] // args.frames[0]} frames |")
    print("|---|" + "---|---|" * len(args.frames) + "---|")
    for variant in args.variants:
        cells, flops = [], []
        for frames in args.frames:
            cfg = get_preset(args.preset)
            cfg.num_frames, cfg.temporal, cfg.num_classes = frames, variant, 3
            flops.append(count_flops(cfg) / 1e9)
            sec = float("nan") if args.no_time else seconds_per_clip(cfg, args.iters)
            cells.append(f"{flops[-1]:.1f} | {sec:.2f}")
        print(f"| `{variant}` | " + " | ".join(cells) + f" | {flops[-1] / flops[0]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
