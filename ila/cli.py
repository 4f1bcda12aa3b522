"""The `ila` command line: argument parsing only; each subcommand calls one library function.

Errors the user can fix (bad paths, bad config values, bad files) are raised as `ila.errors.UserError`
anywhere in the library and printed here as one line, never as a traceback.
"""
from __future__ import annotations

import argparse
import sys

from ila.errors import UserError


def _cmd_info(args: argparse.Namespace) -> None:
    from ila.info import print_info

    print_info(args.preset, temporal=args.temporal, frames=args.frames)


def _cmd_make_dataset(args: argparse.Namespace) -> None:
    from ila.data.synthetic import make_dataset

    make_dataset(args.out_dir, num_train=args.train, num_val=args.val, size=args.size,
                 frames=args.frames, seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ila", description="ILA video recognition: train, evaluate, predict.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="parameters and GFLOPs of a preset")
    p.add_argument("preset", help="preset name (`ila info list` lists them)")
    p.add_argument("--temporal", default=None, choices=["ila", "mean", "attention"],
                   help="temporal modelling variant (default: the preset's)")
    p.add_argument("--frames", type=int, default=None, help="override the preset's frame count")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("make-dataset", help="write the generated motion dataset (H.264 MP4 + lists)")
    p.add_argument("out_dir")
    p.add_argument("--train", type=int, default=1280, help="number of training videos")
    p.add_argument("--val", type=int, default=320, help="number of validation videos")
    p.add_argument("--size", type=int, default=64, help="frame side in pixels")
    p.add_argument("--frames", type=int, default=16, help="frames per video")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_make_dataset)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except UserError as e:
        print(f"ila {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ila {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
