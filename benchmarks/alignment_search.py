"""Issue 25, point 4: search for a setting where ILA's learnable alignment can matter.

    python benchmarks/alignment_search.py --out runs/align-search                    # every setting below
    python benchmarks/alignment_search.py --out runs/align-search --settings grid8 --epochs 2 --train 64   # a try

In the demo (32 px frames, a 4x4 patch grid, objects moving about half a patch between sampled frames) the
interactive points stay at the grid centre in every model, with or without the alignment loss, and `pool` (the pair
pathway with average pooling in place of the mask) comes within a few points of ILA (docs/ablations.md). This
script moves every knob the issue names towards alignment and measures whether the points then follow the object
(`point_error`, in patches, against a point fixed at the grid centre) and whether ILA gets ahead of `pool`:

- an 8x8 patch grid: 72 px frames cropped to 64 px (`model.image_resolution=64`, `data.input_size=64`);
- objects that travel farther than a patch between sampled frames: only the translation pairs (left/right and
  up/down: every clip's object moves), motion amplitude 0.8-1.0, 4 frames per clip (1.2-1.6 patches per step);
- a frozen appearance-pretrained tower (the demo's `frozen` setting: the tower learns shape x colour on single
  frames, then only the alignment, the skip projections and the head train);
- the alignment loss on (`ila@loss`, the release's weight 1) beside ILA without it and `pool`;
- `grid8-flicker`: the same with a textured background drawn anew in every frame, so that the moving object is
  the only content two frames share (with a static background, two points on the same background cell give
  identical pooled features, which the release's loss, 1 - cos of the pooled features, cannot beat);
- `grid8-flicker-loss10`: the flickering set with the alignment loss at 10x the release's weight on `ila` (its
  only rows: `ila`, `pool`): can the loss move the points at all?
- `grid8-flicker-paper`: the flickering set with the paper's form of the block (`model.mi_token=paper`: each
  frame's mask-pooled features enter its spatial attention as one more token, so where the points sit decides what
  that token carries; `pool`'s token is then the plain average, the paper's "Average Pooling" row exactly).

Each setting is one `ila demo` run (`ila.demo.run_demo` with the setting's budget and config changes: the same
engine, configs in OUT/SETTING/configs/ that `ila train --config` reruns); the table is `ila.demo.format_table`'s.
Results and the measured conclusions: docs/ablations.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from ila.demo import FULL, format_table, merge_results, run_demo
from ila.errors import UserError

GRID8 = (("model.image_resolution", 64), ("data.input_size", 64), ("model.num_frames", 4), ("data.num_frames", 4))
MOVING = dict(size=72, pairs=("horizontal", "vertical"), motion=(0.8, 1.0))
FLICKER = dict(MOVING, distractors=0, texture=0.8, flicker=True)
SETTINGS = {  # name: (generator, config changes for every row, rows (None: --rows))
    "grid8": (dict(MOVING, distractors=0, texture=0.0), GRID8, None),
    "grid8-flicker": (FLICKER, GRID8, None),
    "grid8-flicker-loss10": (FLICKER, (*GRID8, ("train.align_loss_weight", 10.0)), ("ila", "pool")),
    "grid8-flicker-paper": (FLICKER, (*GRID8, ("model.mi_token", "paper")), None),
}
ROWS = ("ila@loss", "ila", "pool")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="a folder: one sub-folder per setting")
    p.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, of {', '.join(SETTINGS)}")
    p.add_argument("--rows", default=",".join(ROWS), help="the demo's rows (VARIANT@OPTION)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--pretrain-epochs", type=int, default=10)
    p.add_argument("--train", type=int, default=1280, help="training clips")
    p.add_argument("--val", type=int, default=320, help="validation clips")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    names = [s for s in args.settings.split(",") if s]
    unknown = [s for s in names if s not in SETTINGS]
    if unknown or not names:
        raise SystemExit(f"--settings: unknown {unknown}; choose from {', '.join(SETTINGS)}")
    for flag in ("epochs", "pretrain_epochs", "train", "val"):
        if getattr(args, flag) < 1:
            raise SystemExit(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise SystemExit(f"--out {out} is a file; give a folder (one sub-folder per setting)")
    for name in names:
        generator, changes, rows = SETTINGS[name]
        budget = replace(FULL, train_clips=args.train, val_clips=args.val, epochs=args.epochs,
                         pretrain_epochs=args.pretrain_epochs, **generator)
        print(f"\n===== {name}: generator {json.dumps(generator)}; config {dict(changes)}", flush=True)
        run_demo(out / name, seed=args.seed, variants=list(rows or args.rows.split(",")), budget=budget,
                 settings=("frozen",), changes=changes)
    print()
    for name in names:
        results = out / name / "results.json"
        if results.is_file():
            print(f"{name}:\n{format_table(merge_results([results]))}\n")


if __name__ == "__main__":
    try:
        main()
    except UserError as e:                      # a bad run, preset or set: one line, as ila's commands print it
        raise SystemExit(f"{os.path.basename(__file__)}: {e}") from None
    except OSError as e:                        # an output folder that cannot be written
        raise SystemExit(f"{os.path.basename(__file__)}: {e.strerror or e} ({e.filename})") from None
