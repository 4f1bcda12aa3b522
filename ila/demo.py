"""`ila demo`: the whole system on a CPU in minutes, and the paper's claim in miniature, through the engine.

1. `ila make-dataset`: the generated motion set (8 classes in 4 time-reversed pairs, 16 frames of 36 px,
   H.264); reused when it is already there with the same parameters.
2. One config per model is written to OUT/configs/ (`ila train --config OUT/configs/NAME.yaml` trains the
   same model, weight for weight), and the model is trained by the engine (`ila.engine.train.train`, the
   `Trainer` of `ila train`) with `data.cache=memory`: every video is decoded once and clips are served
   from memory with the same sampling and transforms, because per-clip decoding costs more than this small
   model on two cores.
3. From scratch: the `demo` preset is trained for each of `ila`, `mean` and `attention` (the registered
   temporal variants that are not cost references; `--variants` picks others) with one recipe and budget. Frozen-pretrained (`--settings scratch,frozen`): the image tower is first pretrained on single
   frames of an appearance set (shape x colour classes, `ila.data.synthetic.make_appearance_dataset`), then
   `ila`, `mean` and `attention` start from that tower, frozen (`model.freeze_clip=true`,
   `train.init_parts=tower`: alignment, skip projections and head train), with the same budget.
4. Each model is evaluated by `ila eval` (`eval.clips` temporal views; metrics.json, confusion.png and
   per_class.png in RUN/eval/); one table is printed: top-1, mean class accuracy, GFLOPs per view,
   parameters, training time and speed, and for models with alignment maps `point_error` against the
   fixed-centre figure (the set's positions.json: `ila.engine.tracking`).
   The table's rows (`--variants`) may also be ablations: `pool`, `shift`, and ILA with options
   (`ila@first`, `ila@middle`, `ila@half`, `ila@loss`, ...: `parse_row`; docs/ablations.md).
5. `ila predict --visualize` on one validation video draws where ILA's interactive points land.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from ila import jsonsafe
from ila.atomic import write_text
from ila.config import load_config
from ila.data.synthetic import (DEFAULT_PAIRS, appearance_class_names, class_names, make_appearance_dataset,
                                make_dataset)
from ila.engine.evaluate import run_eval
from ila.engine.loaders import read_split, video_dataset
from ila.engine.predict import run_predict
from ila.engine.report import read_metrics
from ila.engine.train import run_dir_of, train
from ila.errors import UserError
from ila.info import count_flops, count_parameters
from ila.models.ist_block import ISTBlock
from ila.models.registry import create_blocks, temporal_variants
from ila.presets import DEMO_RECIPE, PRESETS
from ila.weights.checkpoint import latest_checkpoint

VARIANTS = temporal_variants(references=False)  # what the demo compares by default: ila and its baselines
SETTINGS = ("scratch", "frozen")
VIDEO_SIZE = 36   # 256/224 x 32: the 32 px crops are taken without resampling


@dataclass(frozen=True)
class Budget:
    """How much data and training the demo spends; the same for every variant of a setting."""

    train_clips: int = 2560
    val_clips: int = 320
    frames: int = 16            # frames per generated video (the `demo` preset samples 6 by segments)
    motion: tuple = (0.7, 1.0)  # generator: motion amplitude range (fraction of the largest)
    distractors: int = 0        # generator: static distractor shapes per clip
    texture: float = 0.0        # generator: background texture strength (0: flat)
    # the training recipe: the `demo` preset's (ila.presets.DEMO_RECIPE; why no alignment loss: README, "The demo")
    epochs: int = DEMO_RECIPE["epochs"]
    batch_size: int = DEMO_RECIPE["batch_size"]
    lr: float = DEMO_RECIPE["lr"]
    weight_decay: float = DEMO_RECIPE["weight_decay"]
    warmup_epochs: float = DEMO_RECIPE["warmup_epochs"]
    label_smoothing: float = DEMO_RECIPE["label_smoothing"]
    align_loss_weight: float = DEMO_RECIPE["align_loss_weight"]
    eval_clips: int = 2         # temporal test views per video
    val_every: int = 2          # single-view validation for the curves every N epochs (and at the end)
    pretrain_epochs: int = 5    # frozen setting: single-frame appearance pretraining of the tower
    size: int = VIDEO_SIZE      # generator: frame side in pixels (the loader resizes to the model's input)
    pairs: tuple = DEFAULT_PAIRS  # generator: the motion pairs (classes 2p, 2p + 1)
    flicker: bool = False       # generator: the background texture drawn anew in every frame


FULL = Budget()
# The generated sets the demo measures on: `flat` (the demo's own: flat backgrounds, no distractors, large motions)
# and `textured` (`ila make-dataset`'s defaults: 64 px, textured backgrounds, 2 static distractors, motion 0.5-0.85).
DATA_KINDS = {
    "flat": dict(size=VIDEO_SIZE, motion=(0.7, 1.0), distractors=0, texture=0.0),
    "textured": dict(size=64, motion=(0.5, 0.85), distractors=2, texture=0.5),
}

QUICK = Budget(train_clips=32, val_clips=16, epochs=2, batch_size=8, warmup_epochs=0.5, val_every=1,
               pretrain_epochs=1)


# ----------------------------------------------------------------------------------------------------- rows

ALIGN_LOSS_ON = 1.0   # `--align-loss on` / a row's `@loss`: the release's alignment-loss weight
ROW_OPTIONS = {       # a row's @OPTION -> (config key, value; "{half}": half the depth)
    "adjacent": ("model.align_pairing", "adjacent"), "first": ("model.align_pairing", "first"),
    "middle": ("model.align_pairing", "middle"), "half": ("model.align_blocks", "last:{half}"),
    "all": ("model.align_blocks", "all"), "loss": ("train.align_loss_weight", ALIGN_LOSS_ON),
    "noloss": ("train.align_loss_weight", 0.0)}


@dataclass(frozen=True)
class Row:
    """One row of the demo's table: a registered temporal variant and config changes (`VARIANT@OPTION@...`)."""

    name: str                   # as given, e.g. "ila@first"; the run folder is `slug`
    variant: str
    changes: tuple = ()         # (("model.align_pairing", "first"), ...)

    @property
    def slug(self) -> str:
        return self.name.replace("@", "-").replace(":", "")


def parse_row(text: str) -> Row:
    """`VARIANT[@OPTION...]`: OPTION is `first` / `middle` / `adjacent` (model.align_pairing), `half` / `all` /
    `last:K` / `every:K` (model.align_blocks; half: the last half of the blocks), `loss` / `noloss` (the
    alignment loss at the release's weight 1 / off). Pairing and block options only for variants with IST blocks
    (ila, pool). A one-line UserError for anything else."""
    variant, *options = text.split("@")
    if variant not in temporal_variants():
        raise UserError(f"unknown variant(s) [{variant!r}]; choose from {', '.join(temporal_variants())}")
    changes, layers = {}, PRESETS["demo"].model.vision_layers
    for option in options:
        kind, _, count = option.partition(":")
        if option in ROW_OPTIONS:
            key, value = ROW_OPTIONS[option]
            value = value.format(half=max(layers // 2, 1)) if isinstance(value, str) else value
        elif kind in ("last", "every") and count:
            key, value = "model.align_blocks", option
        else:
            raise UserError(f"row {text!r}: unknown option {option!r}; use {', '.join(ROW_OPTIONS)}, last:K or "
                            f"every:K after VARIANT@")
        if key in changes:
            raise UserError(f"row {text!r} sets {key} twice")
        changes[key] = value
    if changes:
        try:
            cfg = load_config("demo", [f"model.temporal={variant}", *(f"{k}={v}" for k, v in changes.items()
                                                                         if k.startswith("model."))]).model
        except UserError as e:
            raise UserError(f"row {text!r}: {e}") from None
        if not any(isinstance(b, ISTBlock) for b in create_blocks(cfg)):
            raise UserError(f"row {text!r}: {variant} has no IST blocks, so the row options do not apply "
                            f"(they do for ila and pool)")
    return Row(text, variant, tuple(changes.items()))


def parse_rows(rows) -> tuple[Row, ...]:
    """The demo's rows from names (`ila`, `ila@first`, ...); refuses none given and a row given twice."""
    parsed = tuple(parse_row(r) if isinstance(r, str) else r for r in rows)
    if not parsed:
        raise UserError(f"no variant given; choose from {', '.join(temporal_variants())}")
    slugs = [r.slug for r in parsed]
    twice = next((r.name for r in parsed if slugs.count(r.slug) > 1), None)
    if twice:
        raise UserError(f"row {twice!r} is given twice")
    return parsed


# ----------------------------------------------------------------------------------------------------- data

def _json_or_none(path: Path):
    """A marker file's JSON, or None when it is damaged (the set is then made again)."""
    try:
        return jsonsafe.loads(path.read_bytes(), path)
    except (OSError, UserError):
        return None


def prepare_data(root: Path, budget: Budget, seed: int, appearance: bool = False) -> Path:
    """Generate the motion set (or the appearance set) under `root` unless the same one is already there."""
    params = {"train": budget.train_clips, "val": budget.val_clips, "size": budget.size, "frames": budget.frames,
              "seed": seed, "motion": list(budget.motion), "distractors": budget.distractors, "texture": budget.texture}
    if tuple(budget.pairs) != DEFAULT_PAIRS:     # recorded only when set, so that older sets are reused
        params["pairs"] = list(budget.pairs)
    if budget.flicker and not appearance:        # single frames (the appearance set) look alike either way
        params["flicker"] = True
    kind = "appearance" if appearance else "motion"
    if appearance:
        params["kind"] = kind
    marker = root / "demo-dataset.json"
    complete = (root / "val.txt").is_file() and (appearance or (root / "positions.json").is_file())
    if marker.is_file() and _json_or_none(marker) == params and complete:
        print(f"[data] reusing {root} ({budget.train_clips} train + {budget.val_clips} val clips)")
        return root
    print(f"[data] generating the {kind} set in {root}: {budget.train_clips} train + {budget.val_clips} val clips "
          f"of {budget.frames} frames at {budget.size} px, seed {seed}, motion amplitude {budget.motion[0]:g}-"
          f"{budget.motion[1]:g}, {budget.distractors} distractors, background texture {budget.texture:g}")
    if marker.is_file():
        marker.unlink()
    extra = {} if appearance else {"flicker": budget.flicker}
    make = make_appearance_dataset if appearance else make_dataset
    make(str(root), num_train=budget.train_clips, num_val=budget.val_clips, size=budget.size, frames=budget.frames,
         seed=seed, motion=tuple(budget.motion), distractors=budget.distractors, texture=budget.texture,
         pairs=tuple(budget.pairs), **extra)
    marker.write_text(json.dumps(params) + "\n")
    return root


# ----------------------------------------------------------------------------------------------------- configs

def demo_config(variant: str, data: Path, run: Path, budget: Budget, seed: int, setting: str = "scratch",
                tower: Path | None = None, changes=(), name: str | None = None):
    """The run's `ila` config: the `demo` preset with `model.temporal` set and this demo's recipe; `frozen`
    starts from the pretrained `tower` checkpoint and trains only alignment, skip projections and head;
    `pretrain` is the tower's single-frame appearance run. `changes`: a row's (key, value) pairs
    (`Row.changes`: model.align_pairing, model.align_blocks, train.align_loss_weight; any `model.`, `data.` or
    `train.` key); `name`: the row's."""
    data, run = data.resolve(), run.resolve()
    model = {"preset": "demo", "temporal": variant}
    train = {"init": "none", "epochs": budget.epochs, "batch_size": budget.batch_size, "lr": budget.lr,
             "weight_decay": budget.weight_decay, "optimizer_groups": "uniform",
             "warmup_epochs": budget.warmup_epochs, "mixup": 0.0, "cutmix": 0.0,
             "label_smoothing": budget.label_smoothing, "align_loss_weight": budget.align_loss_weight,
             "seed": seed, "eval_every_epochs": budget.val_every, "keep_last": 1}
    frames = PRESETS["demo"].model.num_frames
    if setting == "frozen":
        if tower is None:
            raise UserError("the frozen setting needs the pretrained tower's checkpoint")
        model["freeze_clip"] = True
        train.update(init=str(Path(tower).resolve()), init_parts="tower")
    elif setting == "pretrain":
        model.update(temporal="mean", num_frames=1)
        train.update(epochs=budget.pretrain_epochs, eval_every_epochs=budget.pretrain_epochs)
        frames = 1
    loader = {"root": str(data), "train_list": str(data / "train.txt"), "val_list": str(data / "val.txt"),
              "class_names": str(data / "classes.txt"), "num_frames": frames, "input_size": 32,
              "cache": "memory", "recipe": "crop", "workers": 0}
    sections = {"model": model, "data": loader, "train": train}
    for section, field, value in split_changes(changes):
        sections[section][field] = value
    return load_config({
        "model": model,
        "data": loader,
        "train": train,
        "eval": {"clips": budget.eval_clips if setting != "pretrain" else 1, "crops": 1, "batch_size": 32},
        "name": f"demo-{setting}-{name or variant}", "output": str(run), "device": "cpu"})


def split_changes(changes) -> list[tuple[str, str, object]]:
    """Config changes `((key, value), ...)` as `(section, field, value)`, the section one of model, data, train; a
    one-line UserError for anything else."""
    split = []
    for change in changes:
        key = change[0] if isinstance(change, (tuple, list)) and len(change) == 2 else None
        section, _, field = key.partition(".") if isinstance(key, str) else ("", "", "")
        if section not in ("model", "data", "train") or not field:
            raise UserError(f"config change {change!r}: give (KEY, VALUE) with a key of model., data. or train. "
                            f"(e.g. ('model.num_frames', 4))")
        split.append((section, field, change[1]))
    return split


def write_config(cfg, path: Path) -> Path:
    """The YAML that `ila train --config` reads to train this model again."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, cfg.to_yaml())
    return path


# ----------------------------------------------------------------------------------------------------- one model

def train_and_eval(cfg, config_path: Path, log) -> dict:
    """Train one model with the engine (`ila train`), then evaluate its final checkpoint (`ila eval`)."""
    run_dir = run_dir_of(cfg)
    if run_dir.exists():
        if not (run_dir / "config.yaml").is_file():
            raise UserError(f"{run_dir} exists and is not a run of the demo; choose another --out")
        log(f"[{cfg.name}] replacing the previous run in {run_dir}")
        shutil.rmtree(run_dir)
    write_config(cfg, config_path)
    for split in ("train", "val"):                  # decode once before the clock starts (kept for the process)
        video_dataset(cfg, read_split(cfg, split)[0], train=split == "train")
    log(f"\n$ ila train --config {config_path}")
    start = time.perf_counter()
    train(cfg)
    train_seconds = time.perf_counter() - start
    checkpoint = latest_checkpoint(run_dir)
    log(f"$ ila eval --checkpoint {checkpoint}")
    start = time.perf_counter()
    metrics = run_eval(checkpoint)
    eval_seconds = time.perf_counter() - start
    rows = read_metrics(run_dir / "metrics.jsonl")
    steps = max((r["step"] for r in rows if "step" in r), default=0)
    return {"top1": metrics["top1"], "mean_class_acc": metrics["mean_class_acc"],
            "gflops_per_view": count_flops(cfg.model) / 1e9, "params_m": count_parameters(cfg.model)[0] / 1e6,
            "trainable_m": count_parameters(cfg.model)[1] / 1e6,
            "train_seconds": train_seconds, "train_steps": steps,
            "train_steps_per_s": steps / max(train_seconds, 1e-9),
            "eval_clips_per_s": metrics["videos"] * cfg.eval.clips / max(eval_seconds, 1e-9),
            "point_error": metrics.get("point_error"), "centre_point_error": metrics.get("centre_point_error"),
            "align_loss_weight": cfg.train.align_loss_weight,
            "checkpoint": str(checkpoint), "config": str(config_path), "run": str(run_dir),
            "val_curve": [r["val_top1"] for r in rows if "val_top1" in r]}


# ----------------------------------------------------------------------------------------------------- table

def _spread(values: list[float], digits: int = 1) -> str:
    """'82.8' for one value, '82.8 ± 1.6' (mean ± sample standard deviation) for several."""
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def format_table(results: dict) -> str:
    """results: {(setting, variant): [one dict per seed]} -> a Markdown table (mean ± spread over seeds)."""
    several = any(len(runs) > 1 for runs in results.values())
    tracked = any(x.get("point_error") is not None for runs in results.values() for x in runs)
    head = ("setting", "model", "top-1 (%)", "mean class (%)", "GFLOPs/view", "params (M)", "trained (M)",
            "train s", "steps/s") + (("point err", "centre err") if tracked else ()) + \
        (("top-1 per seed",) if several else ())
    rows = [head]
    for (setting, variant), runs in results.items():
        r = runs[0]
        row = (setting, variant, _spread([x["top1"] for x in runs]), _spread([x["mean_class_acc"] for x in runs]),
               f"{r['gflops_per_view']:.3f}", f"{r['params_m']:.2f}", f"{r['trainable_m']:.2f}",
               f"{sum(x['train_seconds'] for x in runs) / len(runs):.0f}",
               f"{sum(x['train_steps_per_s'] for x in runs) / len(runs):.1f}")
        if tracked:          # patches from each frame's object centre: the points, and a point fixed at the centre
            errors = [[x[k] for x in runs if x.get(k) is not None] for k in ("point_error", "centre_point_error")]
            row += tuple(_spread(e, 2) if e else "-" for e in errors)
        if several:
            row += (" / ".join(f"{x['top1']:.1f}" for x in runs),)
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["| " + " | ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) + " |"
             for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def merge_results(paths) -> dict:
    """The runs of several `ila demo` outputs (their results.json, e.g. one process per seed) as one
    {(setting, row): [runs]} for `format_table`, rows in the order first seen, runs in the order given."""
    merged: dict[tuple[str, str], list[dict]] = {}
    for path in paths:
        path = Path(path)
        try:
            saved = jsonsafe.loads(path.read_bytes(), path)
            runs = saved["results"].items()
        except OSError as e:
            raise UserError(f"cannot read {path}: {e.strerror or e}") from None
        except (KeyError, TypeError, AttributeError):
            raise UserError(f"{path} is not the results.json of ila demo") from None
        for key, seeds in runs:
            setting, _, row = key.partition("/")
            merged.setdefault((setting, row), []).extend(seeds)
    return merged


# ----------------------------------------------------------------------------------------------------- demo

def run_demo(out: str | Path = "demo_out", seed: int = 0, quick: bool = False, data_seed: int = 0,
             variants=None, budget: Budget | None = None, epochs: int | None = None,
             settings=SETTINGS, seeds: int = 1, data: str = "flat", align_loss: str | None = None,
             changes=()) -> dict:
    """Run the demo for `seeds` training seeds (seed, seed + 1, ...) on the `data` kind of generated set;
    returns {"SETTING/ROW": [metrics and speeds per seed]} (also written to OUT/results.json).
    `variants`: the table's rows, registered temporal variants with options (`parse_row`: `ila`, `pool`,
    `ila@first`, `ila@half`, `ila@loss`, ...; default: every variant that is not a cost reference or an
    ablation), each at the same budget. `align_loss`: `on` (weight 1, the release's) or `off` (0, the demo's
    recipe) for every row that does not set it. `changes`: config (key, value) pairs for every model, before each
    row's own (e.g. `(("model.image_resolution", 64), ("data.input_size", 64))`; the frozen setting's pretrained
    tower takes them too, except frame counts: it sees single frames)."""
    started = time.perf_counter()
    if data not in DATA_KINDS:
        raise UserError(f"unknown --data {data!r}; choose from {', '.join(DATA_KINDS)}")
    if not isinstance(seeds, int) or not 1 <= seeds <= 100:
        raise UserError(f"--seeds must be a whole number from 1 to 100; got {seeds!r}")
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or not 1 <= epochs <= 1000):
        raise UserError(f"--epochs must be a whole number from 1 to 1000; got {epochs!r}")
    budget = budget or replace(QUICK if quick else FULL, **DATA_KINDS[data])
    if epochs is not None:
        budget = replace(budget, epochs=epochs)
    if align_loss not in (None, "on", "off"):
        raise UserError(f"--align-loss must be on or off; got {align_loss!r}")
    if align_loss is not None:
        budget = replace(budget, align_loss_weight=ALIGN_LOSS_ON if align_loss == "on" else 0.0)
    rows = parse_rows(temporal_variants(references=False) if variants is None else variants)
    changes = tuple(changes)
    split_changes(changes)                      # a bad change stops here, before anything is generated or trained
    settings = tuple(settings)
    wrong = [s for s in settings if s not in SETTINGS]
    if wrong or not settings:
        raise UserError(f"unknown setting(s) {wrong}; choose from {', '.join(SETTINGS)}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder")
    out.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(msg, flush=True)

    seed_list = list(range(seed, seed + seeds))
    log(f"ila demo: rows {', '.join(r.name for r in rows)} on time-reversed motions "
        f"({'quick' if quick else 'full'} budget: {budget.epochs} epochs, alignment loss weight "
        f"{budget.align_loss_weight:g} unless a row sets it, {data} set, seed(s) "
        f"{', '.join(map(str, seed_list))}, settings {', '.join(settings)}, {torch.get_num_threads()} CPU thread(s))")
    suffix = "" if data == "flat" else f"-{data}"        # OUT/data, OUT/data-textured (and -appearance) side by side
    motion_data = prepare_data(out / f"data{suffix}", budget, data_seed)
    results: dict[tuple[str, str], list[dict]] = {}
    for s in seed_list:
        base = out if seeds == 1 else out / f"seed-{s}"
        for setting in settings:
            tower = None
            if setting == "frozen":
                appearance = prepare_data(out / f"data-appearance{suffix}", budget, data_seed, appearance=True)
                cfg = demo_config("pretrain", appearance, base / "pretrain", budget, s, "pretrain",
                                  changes=[(k, v) for k, v in changes if not k.endswith(".num_frames")])
                r = train_and_eval(cfg, base / "configs" / "pretrain.yaml", log)
                tower = Path(r["checkpoint"])
                log(f"[pretrain] image tower on single frames of {len(appearance_class_names())} appearance "
                    f"classes (shape x colour): top-1 {r['top1']:.1f}% ({r['train_seconds']:.0f} s)  ->  {tower}")
            for row in rows:
                name = row.slug if setting == "scratch" else f"{setting}-{row.slug}"
                cfg = demo_config(row.variant, motion_data, base / name, budget, s, setting, tower,
                                  (*changes, *row.changes), row.slug)
                r = train_and_eval(cfg, base / "configs" / f"{name}.yaml", log)
                r["seed"] = s
                results.setdefault((setting, row.name), []).append(r)
                tracked = "" if r["point_error"] is None else (
                    f", point_error {r['point_error']:.2f} patches (fixed centre {r['centre_point_error']:.2f})")
                log(f"[{name}, seed {s}] {budget.eval_clips}-view test: top-1 {r['top1']:.1f}%, mean class "
                    f"{r['mean_class_acc']:.1f}%{tracked}, {r['train_seconds']:.0f} s of training  ->  "
                    f"{r['checkpoint']}")

    table = format_table(results)
    log(f"\nResults on {budget.val_clips} validation videos of the {data} set ({budget.eval_clips} views each; "
        f"{len(seed_list)} seed(s); chance 12.5 %, a model blind to frame order cannot exceed 50 %):\n{table}")
    for setting in settings:
        if (setting, "ila") not in results:
            continue
        ila = results[(setting, "ila")]
        for other in (r.name for r in rows if r.name != "ila"):
            runs = results[(setting, other)]
            leads = [a["top1"] - b["top1"] for a, b in zip(ila, runs)]
            log(f"{setting}: ILA - {other}: {_spread(leads)} points top-1 (per seed: "
                f"{', '.join(f'{x:+.1f}' for x in leads)}) at {ila[0]['gflops_per_view'] / runs[0]['gflops_per_view']:.2f}x "
                f"the GFLOPs per view")
    write_text(out / "results.md", table + "\n")

    pictures = []
    first = next((st for st in settings if (st, "ila") in results), None)
    if first is not None:
        # one validation video of each class (the val split cycles through the labels), drawn by `ila predict`
        count = min(len(class_names(budget.pairs)), budget.val_clips)
        videos = [str(motion_data / "val" / f"{k:06d}.mp4") for k in range(count)]
        points = out / "points"
        checkpoint = results[(first, "ila")][0]["checkpoint"]
        log(f"\n$ ila predict --checkpoint {checkpoint} {motion_data / 'val'}/{{000000..{count - 1:06d}}}.mp4 "
            f"--topk 3 --visualize {points}/")
        run_predict(checkpoint, videos, topk=3, visualize=str(points) + "/")
        pictures.append(points)
    elapsed = time.perf_counter() - started
    summary = {f"{st}/{v}": runs for (st, v), runs in results.items()}
    write_text(out / "results.json", json.dumps({"seeds": seed_list, "data": data, "budget": asdict(budget),
                                                 "rows": {r.name: dict(r.changes) for r in rows},
                                                 "seconds": elapsed, "results": summary}, indent=2) + "\n")
    log(f"\nDone in {elapsed / 60:.1f} min. Outputs in {out}/: results.md, results.json, "
        f"{', '.join(p.name + '/' for p in pictures)}; per model: configs/NAME.yaml, NAME/curves.png, "
        f"NAME/eval/confusion.png")
    return summary
