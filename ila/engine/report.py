"""What a person sees of a run: progress bars, metrics (JSONL and TensorBoard), curves, confusion matrices.

Only the main process reports; the others get a `Reporter` that does nothing. Every file is written
atomically, and `metrics.jsonl` is cut back to the resumed step when a run continues.
"""
from __future__ import annotations

import csv
import io
import json
import math
import sys
import time
import zlib
from pathlib import Path
from typing import Iterable

import numpy as np
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from ila import jsonsafe
from ila.atomic import atomic_path, write_text
from ila.engine.optim import describe_schedule
from ila.errors import UserError


class Progress:
    """A tqdm bar over a run's optimizer steps showing loss, lr and clips/s (tqdm adds the ETA)."""

    def __init__(self, total: int, desc: str, enabled: bool, initial: int = 0):
        self.bar = tqdm(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True,
                        leave=True, file=sys.stderr, unit="step")
        self.last, self.clips = time.perf_counter(), 0
        self.rate = 0.0

    def update(self, clips: int, **values) -> float:
        """Advance one step of `clips` clips; returns the current clips/s."""
        self.clips += clips
        now = time.perf_counter()
        if now - self.last >= 1.0 or self.rate == 0.0:
            self.rate = self.clips / max(now - self.last, 1e-9)
            self.last, self.clips = now, 0
        shown = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in values.items()}
        self.bar.set_postfix(**shown, clips_s=f"{self.rate:.1f}", refresh=False)
        self.bar.update(1)
        return self.rate

    def describe(self, desc: str) -> None:
        self.bar.set_description(desc, refresh=False)

    def close(self) -> None:
        self.bar.close()


class Reporter:
    """Metrics of a run directory: `metrics.jsonl`, TensorBoard events under `tb/`, `curves.png`."""

    def __init__(self, run_dir: str | Path | None, enabled: bool = True, resume_step: int | None = None,
                 redo_validation: bool = False, wandb_project: str = "", config: dict | None = None):
        """`resume_step`: cut `metrics.jsonl` back to that step; `redo_validation`: also drop the validation
        row at that step (its validation runs again); `wandb_project`: also log to Weights & Biases."""
        self.enabled = enabled and run_dir is not None
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.writer = self.wandb = None
        if not self.enabled:
            return
        if wandb_project:
            self.wandb = start_wandb(wandb_project, self.run_dir, config or {})
        self.path = self.run_dir / "metrics.jsonl"
        if resume_step is not None:
            keep = [r for r in read_metrics(self.path) if r.get("step", 0) < resume_step or
                    (r.get("step", 0) == resume_step and not (redo_validation and "val_top1" in r))]
            write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))
        elif self.path.exists():
            self.path.unlink()

        self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=resume_step)

    def log(self, step: int, **values) -> None:
        """One metrics row at optimizer step `step` (values are floats, ints or strings)."""
        if not self.enabled:
            return
        row = {"step": step, **values, "time": round(time.time(), 3)}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch":
                self.writer.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in values.items() if isinstance(v, (int, float))}, step=step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.wandb is not None:
            import wandb

            self.wandb.finish()
            wandb.teardown()          # waits until the run's records are written (offline mode writes them late)
            self.wandb = None

    def write_curves(self, chance: float | None = None) -> Path | None:
        """`curves.png`: training loss and learning rate per step, validation accuracy per epoch (with the
        chance level `chance` in percent as a dashed line)."""
        if not self.enabled:
            return None
        return plot_curves(read_metrics(self.path), self.run_dir / "curves.png", chance)


def start_wandb(project: str, run_dir: Path, config: dict):
    """A Weights & Biases run logging beside TensorBoard, its files under `run_dir/wandb`. The run's id follows
    the run directory, so a resumed run continues the same W&B run. `WANDB_MODE=offline` logs without a network
    (`wandb sync` uploads later)."""
    try:
        import wandb
    except ImportError:
        raise UserError(f"train.wandb={project}: Weights & Biases is not installed; pip install wandb "
                        f"(or pip install -e '.[wandb]' in the ila checkout), or leave train.wandb empty") from None
    run_dir.mkdir(parents=True, exist_ok=True)
    run_id = f"{run_dir.name[:40]}-{zlib.crc32(str(run_dir.resolve()).encode()):08x}"
    run_id = "".join(c if c.isalnum() or c in "-_" else "-" for c in run_id)
    try:
        return wandb.init(project=project, dir=str(run_dir), name=run_dir.name, id=run_id, resume="allow",
                          config=config, reinit="finish_previous")
    except Exception as e:  # noqa: BLE001 - login, network or settings: the user's to fix
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"train.wandb={project}: Weights & Biases could not start ({first}); log in with "
                        f"`wandb login`, or set WANDB_MODE=offline") from None


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a `metrics.jsonl`; a line cut short by a killed process is left out."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = jsonsafe.loads(line, path)
        except (ValueError, UserError):
            continue
        if isinstance(row, dict) and isinstance(row.get("step", 0), int):
            rows.append(row)
    return rows


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(rows: list[dict], out: str | Path, chance: float | None = None) -> Path:
    plt = _figure()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if "val_top1" in r]
    steps = [r["step"] for r in train]
    axes[0].plot(steps, [r["loss"] for r in train], label="loss")
    if train and "align_loss" in train[0]:
        axes[0].plot(steps, [r["align_loss"] for r in train], label="alignment loss")
    axes[0].set(xlabel="step", title="training loss")
    axes[0].legend()
    axes[1].plot(steps, [r["lr"] for r in train])
    axes[1].set(xlabel="step", title="learning rate (base group)")
    axes[1].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    for key, label in (("val_top1", "top-1"), ("val_top5", "top-5")):
        axes[2].plot([r["epoch"] for r in val], [r[key] for r in val], marker="o", label=label)
    if chance is not None:
        axes[2].axhline(chance, color="grey", linestyle="--", linewidth=1, label=f"chance ({chance:.3g}%)")
    axes[2].set(xlabel="epoch", ylabel="%", title="validation accuracy")
    axes[2].xaxis.set_major_locator(MaxNLocator(integer=True))   # whole epochs only
    if val or chance is not None:
        axes[2].legend()
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return Path(out)


# ----------------------------------------------------------------------------------------- evaluation

def write_per_class(out_csv: str | Path, out_png: str | Path, class_names: list[str], per_class: np.ndarray,
                    counts: np.ndarray) -> None:
    """Per-class top-1: a CSV row per class (name, videos, accuracy in percent; empty for no videos) and a bar chart."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["class", "videos", "accuracy"])
    for name, acc, n in zip(class_names, per_class, counts):
        w.writerow([name, int(n), "" if math.isnan(acc) else f"{acc:.2f}"])
    write_text(out_csv, buf.getvalue())

    plt = _figure()
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(7, min(max(2.5, 0.22 * k + 1), 60)))
    ax.barh(range(k), np.nan_to_num(per_class), color="tab:blue")
    ax.set_yticks(range(k), class_names, fontsize=7 if k <= 100 else 4)
    ax.invert_yaxis()
    ax.set(xlim=(0, 100), xlabel="top-1 accuracy (%)", title=f"per-class accuracy (mean {np.nanmean(per_class):.1f}%)"
           if (counts > 0).any() else "per-class accuracy")
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def write_confusion(out_csv: str | Path, out_png: str | Path, class_names: list[str], matrix: np.ndarray) -> None:
    """Confusion matrix (rows: true class, columns: predicted) as CSV counts and a row-normalised PNG."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["true \\ predicted", *class_names])
    for name, row in zip(class_names, matrix):
        w.writerow([name, *(int(v) for v in row)])
    write_text(out_csv, buf.getvalue())

    plt = _figure()
    k = len(class_names)
    side = min(max(4.0, 0.28 * k + 2), 40)
    fig, ax = plt.subplots(figsize=(side, side))
    rows = matrix.sum(1, keepdims=True)
    norm = np.divide(matrix, rows, out=np.zeros_like(matrix, dtype=float), where=rows > 0)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if k <= 60:
        ax.set_xticks(range(k), class_names, rotation=90, fontsize=7)
        ax.set_yticks(range(k), class_names, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title="confusion (row-normalised)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def format_metrics(metrics: dict, keys: Iterable[str] = ("top1", "top5", "mean_class_acc")) -> str:
    return ", ".join(f"{k} {metrics[k]:.2f}%" for k in keys if k in metrics)


# ----------------------------------------------------------------------------------------- run summary

def _millions(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 10_000 else f"{n:,}"


def run_header(cfg, model, optimizer, steps_per_epoch: int, weights: str) -> list[str]:
    """The recipe a run is about to follow, as the first lines it prints: where the weights come from, the
    parameter counts, the learning rate of every group, the schedule and the augmentation."""
    t = cfg.train
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    merged: dict[str, list] = {}                 # release groups come in pairs: decayed / not (biases, norms)
    for i, g in enumerate(optimizer.param_groups):
        name = str(g.get("name", i)).removesuffix("_no_decay")
        entry = merged.setdefault(name, [g.get("initial_lr", g["lr"]), 0.0, 0])
        entry[1] = max(entry[1], g["weight_decay"])
        entry[2] += sum(p.numel() for p in g["params"])
    groups = [f"{name} {lr:.3g} (wd {wd:.3g}, {_millions(n)})" for name, (lr, wd, n) in merged.items()]
    mix = ", ".join(f"{name} {alpha:g}" if alpha else f"{name} off"
                    for name, alpha in (("mixup", t.mixup), ("cutmix", t.cutmix)))
    if t.mixup and t.cutmix:
        mix += f" (cutmix chance {t.mixup_switch_prob:g})"
    return [f"weights: {weights}",
            f"parameters: {_millions(trainable)} trainable, {_millions(frozen)} frozen",
            f"optimizer: AdamW ({t.optimizer_groups} groups; no weight decay on biases, norms and position "
            f"embeddings), lr per group: " + ", ".join(groups),
            f"schedule: {describe_schedule(cfg, steps_per_epoch)}",
            f"augmentation: {mix}, label smoothing {t.label_smoothing:g}; alignment loss weight {t.align_loss_weight:g}"]
