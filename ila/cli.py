"""The `ila` command line: argument parsing only; each subcommand calls one library function.

Errors the user can fix (bad paths, bad config values, bad files) are raised as `ila.errors.UserError`
anywhere in the library and printed here as one line, never as a traceback.
"""
from __future__ import annotations

import argparse
import os
import sys

from ila.config import load_config
from ila.convert import convert_release
from ila.data.annotations import ANNOTATION_FORMATS, format_choices
from ila.data.prepare import prepare
from ila.data.synthetic import DEFAULT_PAIRS, MOTIONS, make_dataset
from ila.demo import run_demo
from ila.engine.evaluate import run_eval
from ila.engine.features import run_features
from ila.engine.predict import run_predict
from ila.engine.train import resume_config, train
from ila.errors import UserError, one_line, printable
from ila.export import EXPORTERS, export
from ila.info import print_info
from ila.models.fuse import PRECISIONS
from ila.models.registry import temporal_variants
from ila.presets import DEMO_RECIPE, did_you_mean
from ila.serve import run_serve
from ila.version import __version__


def _cmd_info(args: argparse.Namespace) -> None:
    print_info(args.preset, temporal=args.temporal, frames=args.frames, text_classes=args.classes)


def _cmd_make_dataset(args: argparse.Namespace) -> None:
    low, _, high = args.motion.partition(",")
    try:
        motion = (float(low), float(high or low))
    except ValueError:
        raise UserError(f"--motion {args.motion!r}: give a range LOW,HIGH of fractions, e.g. 0.7,1.0") from None
    pairs = tuple(p.strip() for p in args.pairs.split(",") if p.strip())
    make_dataset(args.out_dir, num_train=args.train, num_val=args.val, size=args.size,
                 frames=args.frames, seed=args.seed, motion=motion, distractors=args.distractors,
                 texture=args.texture, layout=args.layout, pairs=pairs, flicker=args.flicker)


def _cmd_train(args: argparse.Namespace) -> None:
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


def _cmd_config(args: argparse.Namespace) -> None:
    print(load_config(args.config, args.set or []).to_yaml(), end="")


def _cmd_eval(args: argparse.Namespace) -> None:
    run_eval(args.checkpoint, args.set or [], output=args.output, classes=args.classes, overwrite=args.overwrite,
             precision=args.precision)


def _cmd_predict(args: argparse.Namespace) -> None:
    return run_predict(args.checkpoint or args.model, args.videos, topk=args.topk, as_json=args.json,
                       classes=args.classes, visualize=args.visualize, block=args.block, overrides=args.set or [],
                       window=args.window, stride=args.stride, csv_out=args.csv, timeline=args.timeline,
                       temporal=args.temporal, timeout=args.timeout, precision=args.precision)


def _cmd_serve(args: argparse.Namespace) -> int:
    return run_serve(args.checkpoint or args.model, host=args.host, port=args.port, precision=args.precision,
                     max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_upload_mb=args.max_upload_mb,
                     classes=args.classes, temporal=args.temporal, overrides=args.set or [],
                     read_timeout=args.read_timeout, max_pending=args.max_pending,
                     upload_timeout=args.upload_timeout)


def _cmd_convert(args: argparse.Namespace) -> None:
    convert_release(args.release, args.out, num_frames=args.frames, variant=args.variant, classes=args.classes,
                    trim_classifier=args.trim_classifier)


def _cmd_prepare(args: argparse.Namespace) -> None:
    r = prepare(args.src, args.out, short_side=args.short_side, gop=args.gop, fps=args.fps,
                frames_jpeg=args.frames_jpeg, workers=args.workers, root=args.root, fmt=args.format,
                class_names=args.class_names)
    print(f"{r.written} written, {r.skipped} already done (verified), {len(r.bad)} unreadable"
          + (f" (listed in {os.path.join(args.out, 'bad_inputs.tsv')})" if r.bad else ""))
    sets = f"data.root={args.out} data.train_list={r.annotation}"
    sets += f" data.class_names={r.class_names}" if r.class_names else ""
    sets += " data.format=frames" if args.frames_jpeg else ""
    print(f"annotations: {r.annotation}; train on the copy with --set {sets}")


def _cmd_export(args: argparse.Namespace) -> None:
    meta = export(args.checkpoint, args.out, args.format, classes=args.classes, frames=args.frames, size=args.size,
                  overrides=args.set or [], check=not args.no_check, precision=args.precision)
    if meta is not None:
        pre = meta["preprocessing"]
        print(f"wrote {args.out} ({args.format}; {pre['num_frames']} frames of {pre['input_size']}px, "
              f"{len(meta['class_names'])} classes; parity error {meta.get('parity_error', float('nan')):.1e}) and "
              f"{args.out}.json")


def _cmd_features(args: argparse.Namespace) -> None:
    run_features(args.checkpoint, args.inputs, args.out, per_frame=args.per_frame, clips=args.clips,
                 text=args.text, text_file=args.text_file, batch_size=args.batch_size, overrides=args.set or [],
                 precision=args.precision)


def _cmd_demo(args: argparse.Namespace) -> None:
    run_demo(args.out, seed=args.seed, quick=args.quick, epochs=args.epochs,
             settings=[s for s in args.settings.split(",") if s], seeds=args.seeds, data=args.data,
             variants=[v for v in args.variants.split(",") if v] if args.variants is not None else None,
             align_loss=args.align_loss)


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", nargs="+", action="extend", metavar="KEY=VALUE",
                   help="override config keys, e.g. train.lr=1e-3 data.num_frames=16 (see the config key table)")


def _add_precision(p: argparse.ArgumentParser, what: str = "inference") -> None:
    p.add_argument("--precision", choices=tuple(PRECISIONS), default="fp32",
                   help=f"{what} precision: fp32 (exact, the default) or bf16 (the frame tower in bfloat16: "
                        f"3.5-4.5x faster than fp32 on a CPU with bf16 units (AMX), logits within 1e-2, outputs "
                        f"float32). See docs/guide/precision.md")


EXAMPLES = {
    "prepare": ["ila prepare data/k400/train.csv data/k400-320 --root data/k400 --short-side 320 --gop 16",
                "ila prepare data/ssv2/train.json data/ssv2-frames --frames-jpeg --workers 16"],
    "info": ["ila info list", "ila info ila-b32-8f-k400", "ila info demo --temporal mean --frames 16"],
    "make-dataset": ["ila make-dataset data/tiny --train 16 --val 8 --size 32 --frames 8",
                     "ila make-dataset data/motion --train 2560 --val 320 --size 36 --motion 0.7,1.0 "
                     "--distractors 0 --texture 0"],
    "config": ["ila config show demo", "ila config show configs/k400-b32-8f.yaml --set train.lr=1e-5",
               "ila config show tiny --set data.train_list=my_videos/ data.val_split=0.2"],
    "train": ["ila train --config demo --set data.train_list=my_videos/ data.val_split=0.2",
              "ila train --config configs/k400-b32-8f.yaml --set train.batch_size=4 train.accumulation=8",
              "ila train --resume runs/demo"],
    "eval": ["ila eval --checkpoint runs/demo", "ila eval --checkpoint runs/demo/best.pt --set eval.clips=4 eval.crops=3",
             "ila eval --checkpoint runs/demo --set data.val_list=my_test_videos/ data.num_frames=16"],
    "predict": ["ila predict --checkpoint runs/demo my_videos/ --json",
                "ila predict --model ViT-B-32.pt --temporal mean --classes dancing,cooking,swimming clip.mp4",
                "ila predict --checkpoint runs/demo long.mp4 --window 4 --stride 2 --json   (a long file, or a live "
                "stream: rtsp://, tcp://, http(s)://, /dev/video0)"],
    "serve": ["ila serve --checkpoint runs/demo   (then open http://127.0.0.1:8000/)",
              "curl -F video=@clip.mp4 -F topk=3 http://127.0.0.1:8000/predict",
              "ila serve --model ViT-B-32.pt --temporal mean --classes dancing,cooking --host 0.0.0.0 --port 8080"],
    "convert": ["ila convert k400_b32_8.pth k400_b32_8_ila.pt --classes kinetics400_labels.csv",
                "ila convert ssv2_b16_8.pth ssv2_b16_8_ila.pt --variant ssv2 --classes labels.json"],
    "export": ["ila export --checkpoint runs/demo --format hub --out shared/demo-ila",
               "ila export --checkpoint runs/demo/best.pt --format onnx --out demo.onnx"],
    "features": ["ila features --checkpoint runs/demo my_videos/ --out features.safetensors",
                 "ila features --checkpoint k400_b32_8_ila.pt videos.txt --out emb.npy --clips 4 --text-file kinetics400"],
    "demo": ["ila demo --quick", "ila demo --out demo_out --seed 1",
             "ila demo --out demo_textured --data textured --seeds 3"],
}


def _examples(command: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in EXAMPLES[command])


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (a wrong flag or value: the message and where help is, not the usage)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {one_line(message, 400)} (`{self.prog} --help` lists the options)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ila", description="ILA video recognition: train, evaluate, predict.",
                                     epilog="`ila COMMAND --help` shows each command's options and examples.")
    parser.add_argument("--version", action="version", version=f"ila {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, **kwargs) -> argparse.ArgumentParser:     # every command's help ends with examples
        return sub.add_parser(name, epilog=_examples(name), formatter_class=argparse.RawDescriptionHelpFormatter,
                              **kwargs)

    p = add("info", help="parameters and GFLOPs of a preset")
    p.add_argument("preset", help="preset name (`ila info list` lists them)")
    p.add_argument("--temporal", default=None, choices=temporal_variants(),
                   help="temporal modelling variant (default: the preset's)")
    p.add_argument("--frames", type=int, default=None, help="override the preset's frame count")
    p.add_argument("--classes", type=int, default=None,
                   help="class names the prompt generator runs against (text heads; default: the preset's classes)")
    p.set_defaults(func=_cmd_info)

    p = add("make-dataset", help="write the generated motion dataset (H.264 MP4 + lists)")
    p.add_argument("out_dir")
    p.add_argument("--train", type=int, default=1280, help="number of training videos")
    p.add_argument("--val", type=int, default=320, help="number of validation videos")
    p.add_argument("--size", type=int, default=64, help="frame side in pixels")
    p.add_argument("--frames", type=int, default=16, help="frames per video")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--motion", default="0.5,0.85", help="motion amplitude range LOW,HIGH (fraction of the largest)")
    p.add_argument("--distractors", type=int, default=2, help="static distractor shapes per clip")
    p.add_argument("--texture", type=float, default=0.5, help="background texture strength (0: flat)")
    p.add_argument("--pairs", default=",".join(DEFAULT_PAIRS),
                   help=f"the motion pairs, comma-separated, of {', '.join(MOTIONS)} (2 classes each)")
    p.add_argument("--flicker", action="store_true",
                   help="draw the background texture anew in every frame (only the object persists)")
    p.add_argument("--layout", choices=["lists", "folders"], default="lists",
                   help="lists: train.txt/val.txt + classes.txt; folders: train/CLASS/*.mp4, val/CLASS/*.mp4")
    p.set_defaults(func=_cmd_make_dataset)

    p = add("config", help="print the resolved config of a YAML file or preset (`ila config show`)")
    p.add_argument("action", choices=["show"], help="show: print every key as the run would use it")
    p.add_argument("config", help="YAML config file or preset name")
    _add_set(p)
    p.set_defaults(func=_cmd_config)

    p = add("train", help="train a model (also under torchrun for DDP)")
    p.add_argument("--config", help="YAML config file or preset name")
    _add_set(p)
    p.add_argument("--output", help="run directory (default: runs/NAME); an existing run there is continued")
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="RUN_OR_CKPT",
                   help="continue a run: its directory or a checkpoint (alone: the --output directory)")
    p.set_defaults(func=_cmd_train)

    p = add("eval", help="accuracy of a checkpoint on data.val_list (clips x crops views)")
    p.add_argument("--checkpoint", required=True, help="an ila checkpoint, run directory, shared folder or Hub id")
    _add_set(p)
    p.add_argument("--output", help="where metrics.json, per_class.csv and confusion.csv/png go (default: eval/ "
                                     "beside the checkpoint; for a shared folder, .safetensors file or Hub id, "
                                     "eval/NAME in the current folder, never inside the shared folder). An earlier "
                                     "evaluation there is replaced only if it used the same weights and data")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier evaluation in --output even if it used other weights or other data")
    p.add_argument("--classes", help="class-name file or comma-separated names (default: the checkpoint's)")
    _add_precision(p)
    p.set_defaults(func=_cmd_eval)

    p = add("predict", help="top-k classes of video files or folders")
    source = p.add_mutually_exclusive_group(required=True)       # one of them: the same option by two names
    source.add_argument("--checkpoint", help="an ila checkpoint, run directory, shared folder or Hub id")
    source.add_argument("--model", help="any model, as --checkpoint takes it (an ila checkpoint or run, a shared "
                                        "folder or Hub id, an authors' release checkpoint), or CLIP weights (a file "
                                        "or a name such as ViT-B-32:openai) with --temporal mean and --classes: CLIP "
                                        "zero-shot, frames averaged")
    p.add_argument("--temporal", choices=temporal_variants(), default=None,
                   help="CLIP weights: the temporal variant to score them with (mean: CLIP zero-shot; the others add "
                        "modules CLIP's weights leave untrained, so train first); a trained model: its own variant")
    p.add_argument("videos", nargs="+", metavar="VIDEO_DIR_OR_URL",
                   help="video files, folders of videos, or one live stream (rtsp://, rtmp://, tcp://, udp://, "
                        "http(s)://, /dev/videoN) read with --window")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--classes", help="class-name file or comma-separated names (text-head models: zero-shot)")
    p.add_argument("--visualize", metavar="OUT.png",
                   help="draw frame pairs with interactive points and masks (format from the suffix: .png, .pdf, "
                        ".svg, ...); several videos: OUT-VIDEONAME.png each")
    p.add_argument("--block", type=int, default=-1, help="which block's alignment to draw (default: the last)")
    p.add_argument("--window", type=float, metavar="SECONDS",
                   help="long videos: score sliding windows of this many seconds (T frames spread over each)")
    p.add_argument("--stride", type=float, metavar="SECONDS", help="seconds between window starts (default: --window)")
    p.add_argument("--csv", metavar="OUT.csv", help="also write the predictions as CSV (one row per video/window and rank)")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="live streams: seconds without a frame before the stream counts as stopped (default 10; "
                        "exit status 3)")
    p.add_argument("--timeline", metavar="OUT.png",
                   help="with --window: plot class probabilities over time (several videos: OUT-VIDEONAME.png each)")
    _add_precision(p)
    _add_set(p)
    p.set_defaults(func=_cmd_predict)

    p = add("serve", help="serve a model over HTTP: a web page, POST /predict, GET /health (the serve extra)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="an ila checkpoint, run directory, shared folder or Hub id")
    source.add_argument("--model", help="any model, as `ila predict --model` takes it (CLIP weights with --temporal "
                                        "mean and --classes: CLIP zero-shot)")
    p.add_argument("--temporal", choices=temporal_variants(), default=None,
                   help="CLIP weights: the temporal variant (mean: zero-shot); a trained model: its own variant")
    p.add_argument("--classes", help="class-name file or comma-separated names (text-head models: zero-shot)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only; "
                                                        "0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: a free one, printed)")
    _add_precision(p)
    p.add_argument("--max-batch", type=int, default=8, help="clips run together in one forward pass (default 8)")
    p.add_argument("--max-wait-ms", type=float, default=10.0,
                   help="how long the first queued clip waits for others to batch with (default 10 ms)")
    p.add_argument("--max-upload-mb", type=float, default=100.0,
                   help="the largest request body accepted (MB, default 100)")
    p.add_argument("--read-timeout", type=float, default=10.0,
                   help="seconds a connection has to send a request's headers, and an upload between two pieces of "
                        "its body (default 10; late headers: the connection is closed, a stalled body: 408)")
    p.add_argument("--upload-timeout", type=float, default=120.0,
                   help="seconds a whole upload may take (default 120; longer: 408)")
    p.add_argument("--max-pending", type=int, default=64,
                   help="requests in progress at once; more are answered 503 busy (default 64)")
    _add_set(p)
    p.set_defaults(func=_cmd_serve)

    p = add("convert", help="authors' release checkpoint -> ila checkpoint (.pt), folder or .safetensors")
    p.add_argument("release", metavar="RELEASE.pth")
    p.add_argument("out", metavar="OUT", help="OUT.pt: ila checkpoint; a folder or OUT.safetensors: shareable form")
    p.add_argument("--frames", type=int, default=None, help="frames per clip (default: the checkpoint's)")
    p.add_argument("--variant", choices=["k400", "ssv2"], default=None, help="default: detected from the weights")
    p.add_argument("--classes", help="class-name file or comma-separated names to store in the checkpoint")
    p.add_argument("--trim-classifier", action="store_true",
                   help="a classifier (SSv2) with more outputs than --classes names: keep only the first ones "
                        "(the authors' SSv2 release has 400 outputs for 174 classes)")
    p.set_defaults(func=_cmd_convert)

    p = add("prepare", help="a training-friendly copy of a dataset: short side, keyframes, H.264 (or JPEG)")
    p.add_argument("src", metavar="SRC", help="annotation file (list, Kinetics CSV, SSv2 JSON, frame-folder list) "
                                             "or a folder with one subfolder per class")
    p.add_argument("out", metavar="OUT", help="output folder (a second run skips finished, verified outputs)")
    p.add_argument("--short-side", type=int, default=320, help="short side in pixels (never enlarged)")
    p.add_argument("--gop", type=int, default=None, help="keyframe interval in frames (default: x264's, 250)")
    p.add_argument("--fps", type=float, default=None, help="output frame rate (default: the source's)")
    p.add_argument("--frames-jpeg", action="store_true", help="JPEG frame folders instead of H.264 videos")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1)), help="processes (default: all cores)")
    p.add_argument("--root", default="", help="folder the annotation's paths are relative to")
    p.add_argument("--format", default="auto", choices=format_choices(),
                   help=", ".join(["auto (from the folder or the file)"] + [f"{e.name} ({e.description})"
                                                                           for e in ANNOTATION_FORMATS]))
    p.add_argument("--class-names", default=None, help="class-name file (default: from the annotation)")
    p.set_defaults(func=_cmd_prepare)

    p = add("export", help="a checkpoint to share (hub: config.json + model.safetensors + card) or to deploy "
                           "(onnx, exported: a graph clip -> logits, probs)")
    p.add_argument("--checkpoint", required=True, help="an ila checkpoint, run directory, shared folder or Hub id")
    p.add_argument("--format", required=True, choices=EXPORTERS.names(),
                   help=", ".join(f"{e.name} ({e.description})" for e in EXPORTERS))
    p.add_argument("--out", required=True, metavar="PATH",
                   help="hub: a folder (or a .safetensors file); onnx/exported: the file (its metadata goes to PATH.json)")
    p.add_argument("--classes", help="class names to store (a file, a,b,c, kinetics400 or ssv2; text heads: baked "
                                     "into an onnx/exported graph)")
    p.add_argument("--frames", type=int, default=None, help="onnx/exported: frames per clip (must be the model's)")
    p.add_argument("--size", type=int, default=None, help="onnx/exported: frame side in pixels (must be the model's)")
    p.add_argument("--no-check", action="store_true", help="onnx/exported: skip running the file against PyTorch")
    _add_precision(p, "onnx/exported: the graph's")
    _add_set(p)
    p.set_defaults(func=_cmd_export)

    p = add("features", help="video (and text) embeddings of a checkpoint, to .safetensors or .npy")
    p.add_argument("--checkpoint", required=True, help="an ila checkpoint, run directory, shared folder or Hub id")
    p.add_argument("inputs", nargs="*", metavar="VIDEO|DIR|LIST", help="videos, folders of videos, or list files")
    p.add_argument("--out", required=True, metavar="FILE", help="FILE.safetensors (features + paths) or FILE.npy")
    p.add_argument("--per-frame", action="store_true", help="frame embeddings (videos, T, E) instead of (videos, E)")
    p.add_argument("--clips", type=int, default=1, help="temporal clips per video, embeddings averaged")
    p.add_argument("--text", help="text embeddings of these comma-separated names (text-head models)")
    p.add_argument("--text-file", help="text embeddings of the names in a class file (or kinetics400 / ssv2)")
    p.add_argument("--batch-size", type=int, default=None, help="videos per forward pass (default: eval.batch_size)")
    _add_precision(p)
    _add_set(p)
    p.set_defaults(func=_cmd_features)

    p = add("demo", help="CPU demo: generate the motion set, train ILA / mean / attention, compare")
    p.add_argument("--out", default="demo_out", help="output folder (data, checkpoints, PNGs, results)")
    p.add_argument("--seed", type=int, default=0, help="training seed (initialisation and sampling order)")
    p.add_argument("--quick", action="store_true", help="a tiny budget that only checks that everything runs")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"training epochs of every model (default {DEMO_RECIPE['epochs']}, the demo's recipe; "
                        f"scripts/demo.sh passes 12 to stay under 12 minutes on 2 cores)")
    p.add_argument("--seeds", type=int, default=1, help="train every model with this many seeds (--seed, --seed+1, "
                   "...) and report mean ± spread")
    p.add_argument("--data", default="flat", choices=["flat", "textured"],
                   help="the generated set: flat backgrounds (default) or textured with distractors (make-dataset's "
                   "defaults)")
    p.add_argument("--settings", default="scratch,frozen", metavar="scratch,frozen",
                   help="from scratch, and/or frozen-pretrained (tower pretrained on single frames, then frozen)")
    p.add_argument("--variants", default=None, metavar=",".join(temporal_variants(references=False)),
                   help=f"the table's rows, comma-separated: temporal variants from "
                        f"{', '.join(temporal_variants())} (default: all but the cost references and ablations), "
                        f"each optionally with @OPTIONs: @first / @middle (pair with the first / middle frame), "
                        f"@half / @last:K / @every:K (which blocks align), @loss / @noloss (alignment loss at "
                        f"weight 1 / off), e.g. ila,pool,shift,ila@first,ila@half,ila@loss; see docs/ablations.md")
    p.add_argument("--align-loss", default=None, choices=["on", "off"],
                   help="the alignment loss for every row that does not set it: on (weight 1, the release's) or "
                        "off (0, the demo's recipe: the default)")
    p.set_defaults(func=_cmd_demo)
    return parser


def _unknown_command(argv: list[str], parser: argparse.ArgumentParser) -> str | None:
    """A one-line 'did you mean' for a misspelled subcommand, or None."""
    commands = list(next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices)
    first = next((a for a in argv if not a.startswith("-")), None)
    if first is None or first in commands or argv[0].startswith("-"):
        return None
    return f"ila: error: unknown command {first!r}{did_you_mean(first, commands)} (commands: {', '.join(commands)})"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    unknown = _unknown_command(argv, parser)
    if unknown:
        print(unknown, file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
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
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
