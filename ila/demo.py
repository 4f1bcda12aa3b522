"""`ila demo`: the whole system on a CPU in minutes, and the paper's claim in miniature.

1. `ila make-dataset`: the generated motion set (8 classes in 4 time-reversed pairs, 16 frames of 36 px,
   H.264); reused when it is already there with the same parameters.
2. Every clip is decoded once through the data pipeline (PyAV decoder + the evaluation transform, which
   centre-crops 32 px without resampling) and kept in memory: the per-clip decoding of `ila train` costs
   more than the small model itself on two cores.
3. The `demo` preset (a narrow ViT from scratch, order-blind head) is trained for each of `ila`, `mean`
   and `attention` with the same recipe and budget (AdamW, one learning rate for all parameters, linear
   warm-up then cosine, label smoothing, random segment sampling, random 32 px crops), and saved as an
   `ila` checkpoint.
4. Each model is evaluated with multi-view testing (`eval.clips` temporal views, softmax averaged), and one
   table is printed: top-1, mean class accuracy, GFLOPs per view, training and inference clips/s.
5. PNGs: training curves, confusion matrices, and the interactive points of ILA on one video, drawn by
   `ila predict --visualize`, which also prints its top classes.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ila.errors import UserError

VARIANTS = ("ila", "mean", "attention")
LABELS = {"ila": "ILA (implicit alignment)", "mean": "frame mean (no temporal)",
          "attention": "divided space-time attention"}
VIDEO_SIZE = 36   # 256/224 x 32: the evaluation transform centre-crops 32 px without resampling


@dataclass(frozen=True)
class Budget:
    """How much data and training the demo spends; the same for every variant."""

    train_clips: int = 2560
    val_clips: int = 320
    frames: int = 16            # frames per generated video (the model samples 8 by segments)
    motion: tuple = (0.7, 1.0)  # generator: motion amplitude range (fraction of the largest)
    distractors: int = 0        # generator: static distractor shapes per clip
    texture: float = 0.0        # generator: background texture strength (0: flat)
    epochs: int = 10
    batch_size: int = 16
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    align_loss_weight: float = 1.0
    eval_clips: int = 2         # temporal test views per video
    val_every: int = 2          # single-view validation for the curves every N epochs (and at the end)


FULL = Budget()
QUICK = Budget(train_clips=32, val_clips=16, epochs=2, batch_size=8, warmup_epochs=0.5, val_every=1)


# ----------------------------------------------------------------------------------------------------- data

def prepare_data(root: Path, budget: Budget, seed: int) -> Path:
    """Generate the motion set under `root` unless the same one is already there."""
    from ila.data.synthetic import make_dataset

    params = {"train": budget.train_clips, "val": budget.val_clips, "size": VIDEO_SIZE, "frames": budget.frames,
              "seed": seed, "motion": list(budget.motion), "distractors": budget.distractors, "texture": budget.texture}
    marker = root / "demo-dataset.json"
    if marker.is_file() and json.loads(marker.read_text()) == params and (root / "val.txt").is_file():
        print(f"[data] reusing {root} ({budget.train_clips} train + {budget.val_clips} val clips)")
        return root
    print(f"[data] generating the motion set (the generator of `ila make-dataset`) in {root}: {budget.train_clips} "
          f"train + {budget.val_clips} val clips of {budget.frames} frames at {VIDEO_SIZE} px, seed {seed}, motion "
          f"amplitude {budget.motion[0]:g}-{budget.motion[1]:g}, {budget.distractors} distractors, background "
          f"texture {budget.texture:g}")
    if marker.is_file():
        marker.unlink()
    make_dataset(str(root), num_train=budget.train_clips, num_val=budget.val_clips, size=VIDEO_SIZE,
                 frames=budget.frames, seed=seed, motion=tuple(budget.motion), distractors=budget.distractors,
                 texture=budget.texture)
    marker.write_text(json.dumps(params) + "\n")
    return root


class _WholeFrames:
    """The training clips' "transform": keep the decoded uint8 frames (T, 3, H, W) as they are."""

    short_side = None

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        return clip


def load_clips(cfg, split: str, frames: int, class_names: list[str], train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """All `frames` frames of every video of a split, decoded once through the data pipeline, and the labels.

    train: the whole uint8 frames (N, F, 3, H, W), cropped and normalised per batch by `train_batch`;
    otherwise the evaluation transform's view (centre crop of the input size, normalised) as float16."""
    from ila.data.dataset import VideoDataset, build_loader
    from ila.data.transforms import TestTransform
    from ila.engine.loaders import read_split

    samples, _ = read_split(cfg, split, class_names)
    transform = _WholeFrames() if train else TestTransform(cfg.data.input_size, 1)
    dataset = VideoDataset(samples, root="", num_frames=frames, input_size=cfg.data.input_size, train=False,
                           clips=1, crops=1, transform=transform, bad_file_policy="error")
    workers = min(2, os.cpu_count() or 1, max(len(samples) // 64, 0))
    loader = build_loader(dataset, batch_size=32, shuffle=False, num_workers=workers, seed=0)
    videos, labels = [], []
    for batch in loader:
        videos.append(batch["video"][:, 0] if train else batch["video"][:, 0].to(torch.float16))
        labels.append(batch["label"])
    return torch.cat(videos), torch.cat(labels)


def train_batch(videos: torch.Tensor, num_frames: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Random segment sampling (one random frame in each of `num_frames` equal segments), one random
    `size` crop per clip and the pipeline's normalisation: uint8 (B, F, 3, S', S') -> float (B, T, 3, size, size)."""
    from ila.data.transforms import MEAN, STD

    b, f, _, side, _ = videos.shape
    offsets = torch.rand(b, num_frames, generator=generator)
    index = ((torch.arange(num_frames) + offsets) * (f / num_frames)).floor().long().clamp(max=f - 1)
    clips = videos[torch.arange(b)[:, None], index]
    if side > size:
        top, left = torch.randint(side - size + 1, (2, b), generator=generator)
        clips = torch.stack([c[..., t:t + size, l:l + size] for c, t, l in zip(clips, top.tolist(), left.tolist())])
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    return (clips.float() - mean) / std


def eval_views(videos: torch.Tensor, num_frames: int, views: int) -> torch.Tensor:
    """The deterministic multi-view test clips of `ila eval` (segment sampling): (N, V, T, 3, S, S)."""
    from ila.data.sampling import test_views

    index = torch.from_numpy(test_views(videos.shape[1], num_frames, views, "segment"))
    return videos[:, index]


# ----------------------------------------------------------------------------------------------------- models

def demo_config(variant: str, data: Path, run: Path, budget: Budget, seed: int):
    """The run's `ila` config: the `demo` preset with `model.temporal` set, and this demo's recipe."""
    from ila.config import load_config

    return load_config({
        "model": {"preset": "demo", "temporal": variant},
        "data": {"root": str(data), "train_list": str(data / "train.txt"), "val_list": str(data / "val.txt"),
                 "class_names": str(data / "classes.txt"), "num_frames": 8, "input_size": 32},
        "train": {"init": "none", "epochs": budget.epochs, "batch_size": budget.batch_size, "lr": budget.lr,
                  "weight_decay": budget.weight_decay, "optimizer_groups": "uniform",
                  "warmup_epochs": budget.warmup_epochs, "mixup": 0.0, "cutmix": 0.0,
                  "label_smoothing": budget.label_smoothing, "align_loss_weight": budget.align_loss_weight,
                  "seed": seed},
        "eval": {"clips": budget.eval_clips, "crops": 1, "batch_size": 32},
        "name": f"demo-{variant}", "output": str(run), "device": "cpu"})


@torch.no_grad()
def predict_views(model, clips: torch.Tensor, batch: int = 32) -> tuple[torch.Tensor, float]:
    """Softmax scores averaged over views, (N, K), and the inference speed in clips (views) per second."""
    model.eval()
    n, v = clips.shape[:2]
    flat = clips.flatten(0, 1)
    scores, start = [], time.perf_counter()
    for i in range(0, len(flat), batch):
        scores.append(model(flat[i:i + batch].float()).logits.float().softmax(-1))
    seconds = time.perf_counter() - start
    return torch.cat(scores).view(n, v, -1).mean(1), len(flat) / max(seconds, 1e-9)


def train_variant(variant: str, cfg, class_names, train_x, train_y, val_view, val_y, budget: Budget,
                  seed: int, log) -> dict:
    """Train one model from scratch with the engine's optimizer, schedule and loss; returns its history."""
    from ila.engine.evaluate import classification_metrics
    from ila.engine.train import BETAS, EPS, lr_schedule, soft_cross_entropy
    from ila.models import build_model

    torch.manual_seed(seed)
    model = build_model(cfg.model)
    t = cfg.train
    optimizer = torch.optim.AdamW(model.param_groups(t.lr, t.weight_decay, t.optimizer_groups), betas=BETAS, eps=EPS)
    steps_per_epoch = len(train_x) // t.batch_size
    if steps_per_epoch == 0:
        raise UserError(f"{len(train_x)} training clips do not fill one batch of {t.batch_size}")
    scheduler = lr_schedule(optimizer, cfg, steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    k = len(class_names)
    history, step, train_seconds, seen = [], 0, 0.0, 0
    for epoch in range(t.epochs):
        model.train()
        model.decay_align_delta(epoch)
        order = torch.randperm(len(train_x), generator=generator)
        losses, start = [], time.perf_counter()
        for i in range(steps_per_epoch):
            scheduler.step_update(step)
            idx = order[i * t.batch_size:(i + 1) * t.batch_size]
            video = train_batch(train_x[idx], cfg.data.num_frames, cfg.data.input_size, generator)
            labels = train_y[idx]
            targets = torch.full((len(idx), k), t.label_smoothing / k).scatter_(
                1, labels[:, None], 1 - t.label_smoothing + t.label_smoothing / k)
            out = model(video)
            loss = soft_cross_entropy(out.logits, targets) + t.align_loss_weight * out.align_losses.sum()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise UserError(f"{variant}: the loss became {value} at step {step + 1}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(value)
            step += 1
        train_seconds += time.perf_counter() - start
        seen += steps_per_epoch * t.batch_size
        row = {"epoch": epoch + 1, "step": step, "loss": float(np.mean(losses)),
               "lr": float(optimizer.param_groups[0]["lr"]), "train_clips_per_s": seen / train_seconds}
        if (epoch + 1) % budget.val_every == 0 or epoch + 1 == t.epochs:
            scores, _ = predict_views(model, val_view)
            row["val_top1"] = classification_metrics(scores, val_y)["top1"]
        history.append(row)
        val = f", val top-1 (1 view) {row['val_top1']:5.1f}%" if "val_top1" in row else ""
        log(f"[{variant}] epoch {epoch + 1:2d}/{t.epochs}: loss {row['loss']:.3f}{val} "
            f"({time.perf_counter() - start:.0f} s, {row['train_clips_per_s']:.0f} clips/s)")
    return {"model": model, "history": history, "train_clips_per_s": seen / max(train_seconds, 1e-9),
            "train_seconds": train_seconds}


# ----------------------------------------------------------------------------------------------------- pictures

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(results: dict, out: Path) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for variant, r in results.items():
        h = r["history"]
        axes[0].plot([x["epoch"] for x in h], [x["loss"] for x in h], marker=".", label=LABELS[variant])
        val = [x for x in h if "val_top1" in x]
        axes[1].plot([x["epoch"] for x in val], [x["val_top1"] for x in val], marker="o", label=LABELS[variant])
    axes[0].set(xlabel="epoch", ylabel="loss (classification + alignment)", title="training loss")
    axes[1].axhline(100 / 8, color="grey", ls=":", lw=1, label="chance (12.5 %)")
    axes[1].axhline(50, color="grey", ls="--", lw=1, label="order-blind ceiling (50 %)")
    axes[1].set(xlabel="epoch", ylabel="top-1 (%)", title="validation accuracy (1 view)", ylim=(0, 100))
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_confusions(results: dict, class_names: list[str], out: Path) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, len(results), figsize=(4.6 * len(results), 5.0), squeeze=False)
    for ax, (variant, r) in zip(axes[0], results.items()):
        m = r["metrics"]["confusion"].astype(float)
        m = m / np.maximum(m.sum(1, keepdims=True), 1)
        ax.imshow(m, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(class_names)), class_names, rotation=90, fontsize=7)
        ax.set_yticks(range(len(class_names)), class_names if ax is axes[0][0] else [""] * len(class_names),
                      fontsize=7)
        ax.set(xlabel="predicted", title=f"{variant}: top-1 {r['metrics']['top1']:.1f} %")
    axes[0][0].set_ylabel("true")
    fig.suptitle("confusion matrices (row-normalised); time-reversed twins are adjacent classes", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


# ----------------------------------------------------------------------------------------------------- table

def format_table(results: dict) -> str:
    head = ("model", "top-1 (%)", "mean class (%)", "GFLOPs/view", "params (M)", "train clips/s", "infer clips/s")
    rows = [head]
    for variant, r in results.items():
        m = r["metrics"]
        rows.append((variant, f"{m['top1']:.1f}", f"{m['mean_class_acc']:.1f}", f"{r['gflops']:.3f}",
                     f"{r['params_m']:.2f}", f"{r['train_clips_per_s']:.0f}", f"{r['infer_clips_per_s']:.0f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) + " |"
             for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------- demo

def run_demo(out: str | Path = "demo_out", seed: int = 0, quick: bool = False, data_seed: int = 0,
             variants=VARIANTS, budget: Budget | None = None, epochs: int | None = None) -> dict:
    """Run the demo; returns {variant: metrics and speeds} (also written to OUT/results.json)."""
    from ila.engine.checkpoint import save_checkpoint
    from ila.engine.evaluate import classification_metrics
    from ila.engine.loaders import read_split
    from ila.info import count_flops, count_parameters

    started = time.perf_counter()
    budget = budget or (QUICK if quick else FULL)
    if epochs:
        budget = replace(budget, epochs=epochs)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise UserError(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(f"{msg}", flush=True)

    log(f"ila demo: ILA vs frame averaging vs divided space-time attention on time-reversed motions "
        f"({'quick' if quick else 'full'} budget, seed {seed}, {torch.get_num_threads()} CPU thread(s))")
    data = prepare_data(out / "data", budget, data_seed)
    cfg0 = demo_config("ila", data, out / "ila", budget, seed)
    _, class_names = read_split(cfg0, "val")
    t0 = time.perf_counter()
    train_x, train_y = load_clips(cfg0, "train", budget.frames, class_names, train=True)
    val_x, val_y = load_clips(cfg0, "val", budget.frames, class_names, train=False)
    val_clips = eval_views(val_x, cfg0.data.num_frames, budget.eval_clips)
    val_view = eval_views(val_x, cfg0.data.num_frames, 1)
    log(f"[data] decoded {len(train_x)} train + {len(val_x)} val videos into memory in "
        f"{time.perf_counter() - t0:.1f} s; {budget.epochs} epochs x {len(train_x) // budget.batch_size} steps "
        f"of {budget.batch_size} clips per model")

    results: dict[str, dict] = {}
    for variant in variants:
        cfg = demo_config(variant, data, out / variant, budget, seed)
        r = train_variant(variant, cfg, class_names, train_x, train_y, val_view, val_y, budget, seed, log)
        model = r.pop("model")
        scores, r["infer_clips_per_s"] = predict_views(model, val_clips)
        metrics = classification_metrics(scores, val_y)
        r["metrics"] = metrics
        r["gflops"] = count_flops(cfg.model) / 1e9
        r["params_m"] = count_parameters(cfg.model)[0] / 1e6
        r["checkpoint"] = str(save_checkpoint(out / variant / "model.pt", model, cfg, class_names))
        results[variant] = r
        log(f"[{variant}] {budget.eval_clips}-view test: top-1 {metrics['top1']:.1f}%, mean class "
            f"{metrics['mean_class_acc']:.1f}%  ->  {r['checkpoint']}")

    table = format_table(results)
    log(f"\nResults on {len(val_x)} validation videos ({budget.eval_clips} views each; chance 12.5 %, "
        f"a model blind to frame order cannot exceed 50 %):\n{table}")
    if "ila" in results:
        for other in (v for v in results if v != "ila"):
            gap = results["ila"]["metrics"]["top1"] - results[other]["metrics"]["top1"]
            log(f"ILA - {other}: {gap:+.1f} points top-1 at {results['ila']['gflops'] / results[other]['gflops']:.2f}x "
                f"the GFLOPs per view")
    curves = plot_curves(results, out / "curves.png")
    confusion = plot_confusions(results, class_names, out / "confusion.png")
    summary = {v: {"top1": r["metrics"]["top1"], "mean_class_acc": r["metrics"]["mean_class_acc"],
                   "gflops_per_view": r["gflops"], "params_m": r["params_m"],
                   "train_clips_per_s": r["train_clips_per_s"], "infer_clips_per_s": r["infer_clips_per_s"],
                   "train_seconds": r["train_seconds"], "checkpoint": r["checkpoint"], "history": r["history"]}
               for v, r in results.items()}
    (out / "results.md").write_text(table + "\n")

    pictures = []
    if "ila" in results:
        video = data / "val" / "000000.mp4"   # class 0 of the val split
        points = out / "points.png"
        args = ["predict", "--checkpoint", results["ila"]["checkpoint"], str(video), "--topk", "3",
                "--visualize", str(points)]
        log(f"\n$ ila {' '.join(args)}")
        from ila.cli import main as cli_main

        if cli_main(args) != 0:
            raise UserError("ila predict failed on the demo video")
        pictures.append(points)
    elapsed = time.perf_counter() - started
    (out / "results.json").write_text(json.dumps({"seed": seed, "budget": budget.__dict__, "seconds": elapsed,
                                                  "results": summary}, indent=2) + "\n")
    log(f"\nDone in {elapsed / 60:.1f} min. Outputs in {out}/:")
    for path in [out / "results.md", out / "results.json", curves, confusion, *pictures,
                 *(Path(results[v]["checkpoint"]) for v in results)]:
        log(f"  {path}")
    return summary
