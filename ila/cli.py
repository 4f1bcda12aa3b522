"""The `ila` command line: argument parsing only; each subcommand calls one library function.

Errors the user can fix (bad paths, bad config values, bad files) are raised as `ila.errors.UserError`
anywhere in the library and printed here as one line, never as a traceback.
"""
from __future__ import annotations

import argparse
import os
import sys

from ila.errors import UserError, one_line, printable


def _cmd_info(args: argparse.Namespace) -> None:
    from ila.info import print_info

    print_info(args.preset, temporal=args.temporal, frames=args.frames, text_classes=args.classes)


def _cmd_make_dataset(args: argparse.Namespace) -> None:
    from ila.data.synthetic import make_dataset

    low, _, high = args.motion.partition(",")
    try:
        motion = (float(low), float(high or low))
    except ValueError:
        raise UserError(f"--motion {args.motion!r}: give a range LOW,HIGH of fractions, e.g. 0.7,1.0") from None
    make_dataset(args.out_dir, num_train=args.train, num_val=args.val, size=args.size,
                 frames=args.frames, seed=args.seed, motion=motion, distractors=args.distractors,
                 texture=args.texture)


def _cmd_train(args: argparse.Namespace) -> None:
    from ila.config import load_config
    from ila.engine.train import resume_config, train

    sets = list(args.set or [])
    if args.output:
        sets.append(f"output={args.output}")
    if args.config:
        cfg = load_config(args.config, sets)
    elif args.resume:
        cfg = resume_config(args.resume, sets)
    else:
        raise UserError("give --config CONFIG (a YAML file or a preset name), or --resume RUN_DIR")
    train(cfg, resume=args.resume)


def _cmd_eval(args: argparse.Namespace) -> None:
    from ila.engine.evaluate import run_eval

    run_eval(args.checkpoint, args.set or [], output=args.output, classes=args.classes)


def _cmd_predict(args: argparse.Namespace) -> None:
    from ila.engine.predict import run_predict

    run_predict(args.checkpoint, args.videos, topk=args.topk, as_json=args.json, classes=args.classes,
                visualize=args.visualize, block=args.block, overrides=args.set or [])


def _cmd_convert(args: argparse.Namespace) -> None:
    from ila.engine.convert import convert_release

    convert_release(args.release, args.out, num_frames=args.frames, variant=args.variant, classes=args.classes)


def _cmd_demo(args: argparse.Namespace) -> None:
    from ila.demo import run_demo

    run_demo(args.out, seed=args.seed, quick=args.quick, epochs=args.epochs,
             settings=[s for s in args.settings.split(",") if s])


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", nargs="+", action="extend", metavar="KEY=VALUE",
                   help="override config keys, e.g. train.lr=1e-3 data.num_frames=16 (see the config key table)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ila", description="ILA video recognition: train, evaluate, predict.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="parameters and GFLOPs of a preset")
    p.add_argument("preset", help="preset name (`ila info list` lists them)")
    p.add_argument("--temporal", default=None, choices=["ila", "mean", "attention", "joint"],
                   help="temporal modelling variant (default: the preset's)")
    p.add_argument("--frames", type=int, default=None, help="override the preset's frame count")
    p.add_argument("--classes", type=int, default=None,
                   help="class names the prompt generator runs against (text heads; default: the preset's classes)")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("make-dataset", help="write the generated motion dataset (H.264 MP4 + lists)")
    p.add_argument("out_dir")
    p.add_argument("--train", type=int, default=1280, help="number of training videos")
    p.add_argument("--val", type=int, default=320, help="number of validation videos")
    p.add_argument("--size", type=int, default=64, help="frame side in pixels")
    p.add_argument("--frames", type=int, default=16, help="frames per video")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--motion", default="0.5,0.85", help="motion amplitude range LOW,HIGH (fraction of the largest)")
    p.add_argument("--distractors", type=int, default=2, help="static distractor shapes per clip")
    p.add_argument("--texture", type=float, default=0.5, help="background texture strength (0: flat)")
    p.set_defaults(func=_cmd_make_dataset)

    p = sub.add_parser("train", help="train a model (also under torchrun for DDP)")
    p.add_argument("--config", help="YAML config file or preset name")
    _add_set(p)
    p.add_argument("--output", help="run directory (default: runs/NAME); an existing run there is continued")
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="RUN_OR_CKPT",
                   help="continue a run: its directory or a checkpoint (alone: the --output directory)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="accuracy of a checkpoint on data.val_list (clips x crops views)")
    p.add_argument("--checkpoint", required=True, help="an ila checkpoint file or run directory")
    _add_set(p)
    p.add_argument("--output", help="where metrics.json, per_class.csv and confusion.csv/png go "
                                     "(default: eval/ beside the checkpoint)")
    p.add_argument("--classes", help="class-name file or comma-separated names (default: the checkpoint's)")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("predict", help="top-k classes of video files or folders")
    p.add_argument("--checkpoint", required=True, help="an ila checkpoint file or run directory")
    p.add_argument("videos", nargs="+", metavar="VIDEO_OR_DIR")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--classes", help="class-name file or comma-separated names (text-head models: zero-shot)")
    p.add_argument("--visualize", metavar="OUT.png", help="draw frame pairs with interactive points and masks")
    p.add_argument("--block", type=int, default=-1, help="which block's alignment to draw (default: the last)")
    _add_set(p)
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("convert", help="authors' release checkpoint -> ila checkpoint")
    p.add_argument("release", metavar="RELEASE.pth")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--frames", type=int, default=None, help="frames per clip (default: the checkpoint's)")
    p.add_argument("--variant", choices=["k400", "ssv2"], default=None, help="default: detected from the weights")
    p.add_argument("--classes", help="class-name file or comma-separated names to store in the checkpoint")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("demo", help="CPU demo: generate the motion set, train ILA / mean / attention, compare")
    p.add_argument("--out", default="demo_out", help="output folder (data, checkpoints, PNGs, results)")
    p.add_argument("--seed", type=int, default=0, help="training seed (initialisation and sampling order)")
    p.add_argument("--quick", action="store_true", help="a tiny budget that only checks that everything runs")
    p.add_argument("--epochs", type=int, default=None, help="override the number of training epochs")
    p.add_argument("--settings", default="scratch", metavar="scratch,frozen",
                   help="from scratch, and/or frozen-pretrained (tower pretrained on single frames, then frozen)")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except UserError as e:
        print(f"ila {args.command}: error: {printable(e)[:4000]}", file=sys.stderr)   # one line, no escape codes
        return 2
    except KeyboardInterrupt:
        print(f"ila {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as e:          # a full disk, a vanished file, a permission: the system's reason, in one line
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        reason = os.strerror(e.errno).lower() if e.errno else one_line(e, 300)
        print(f"ila {args.command}: error: {reason}{where}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - a bug of ours: one line, the traceback on request
        if os.environ.get("ILA_DEBUG"):
            raise
        print(f"ila {args.command}: internal error: {type(e).__name__}: {one_line(e, 300)} (this is a bug in ila; "
              f"set ILA_DEBUG=1 for the traceback and please report it)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
