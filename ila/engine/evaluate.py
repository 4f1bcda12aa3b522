"""Evaluation: every video scored once, from one or many views, and the accuracies that follow.

A video seen through `clips` temporal views times `crops` spatial views gets the mean of the per-view
softmax scores. Under DDP process r scores videos r, r+world, ... (no padding, no dropped tail) and
the scores are gathered by video index, so each video counts exactly once.

Metrics: top-1 and top-5 accuracy over videos, mean class accuracy (the mean over classes of each
class's top-1), per-class accuracy and the confusion matrix (rows: true class, columns: predicted).

`release_bn_quirk` reproduces how the Kinetics release measured its numbers: after the first batch
the alignment BatchNorms run on batch statistics (train mode) while alignment uses one point. It is
off by default; the model's running statistics are restored afterwards.
"""
from __future__ import annotations

import csv
import io
import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ila.engine import distributed as dist
from ila.engine.atomic import write_text
from ila.engine.classes import ClassText, check_class_count, class_list, class_text
from ila.engine.precision import autocast


def classification_metrics(scores: torch.Tensor, labels: torch.Tensor) -> dict:
    """Accuracies (in percent) of `scores (N, K)` against `labels (N,)`, plus per-class arrays."""
    n, k = scores.shape
    pred = scores.argmax(1)
    top5 = scores.topk(min(5, k), dim=1).indices
    correct1 = pred == labels
    correct5 = (top5 == labels[:, None]).any(1)
    confusion = torch.zeros(k, k, dtype=torch.int64)
    confusion.index_put_((labels, pred), torch.ones_like(labels), accumulate=True)
    counts = confusion.sum(1).numpy()
    hits = confusion.diag().numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(counts > 0, 100.0 * hits / np.maximum(counts, 1), np.nan)
    return {"videos": n, "top1": 100.0 * correct1.float().mean().item(), "top5": 100.0 * correct5.float().mean().item(),
            "mean_class_acc": float(np.nanmean(per_class)) if (counts > 0).any() else float("nan"),
            "per_class": per_class, "counts": counts, "confusion": confusion.numpy()}


@contextmanager
def release_bn_mode(model: nn.Module, enabled: bool):
    """Yields a function `after_batch()`; once called, alignment BatchNorms use batch statistics."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] if enabled else []
    saved = [{k: v.clone() for k, v in m.state_dict().items()} for m in bns]

    def after_batch() -> None:
        for m in bns:
            m.train()
    try:
        yield after_batch
    finally:
        for m, state in zip(bns, saved):
            m.load_state_dict(state)
            m.eval()


@torch.no_grad()
def score_videos(model: nn.Module, loader, env: dist.Env, text: ClassText, num_classes: int,
                 amp: torch.dtype | None = None, release_bn_quirk: bool = False, progress: bool = True,
                 desc: str = "eval") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(indices, scores (N, K), labels) of every video of the loader's dataset, gathered on all processes."""
    from tqdm import tqdm

    was_training = model.training
    model.eval()
    indices, scores, labels = [], [], []
    bar = tqdm(loader, desc=desc, disable=not (progress and env.main), dynamic_ncols=True, unit="batch", leave=False)
    try:
        with release_bn_mode(model, release_bn_quirk) as after_batch:
            for batch in bar:
                video = batch["video"].to(env.device, non_blocking=True)
                if video.dim() == 5:                       # (B, T, 3, S, S): a single view
                    video = video[:, None]
                b, v = video.shape[:2]
                with autocast(amp, env.device):
                    logits = model(video.flatten(0, 1), **text.kwargs()).logits
                probs = logits.float()[:, :num_classes].softmax(-1).view(b, v, -1).mean(1)
                indices.append(batch["index"].cpu())
                scores.append(probs.cpu())
                labels.append(batch["label"].cpu())
                after_batch()
    finally:
        bar.close()
        model.train(was_training)
    mine = (torch.cat(indices), torch.cat(scores), torch.cat(labels)) if indices else (
        torch.zeros(0, dtype=torch.long), torch.zeros(0, num_classes), torch.zeros(0, dtype=torch.long))
    parts = dist.gather(mine, env)
    idx = torch.cat([p[0] for p in parts])
    order = idx.argsort()
    return idx[order], torch.cat([p[1] for p in parts])[order], torch.cat([p[2] for p in parts])[order]


def evaluate_split(model: nn.Module, cfg, env: dist.Env, class_names: list[str], text: ClassText | None = None,
                   clips: int | None = None, crops: int | None = None, progress: bool = True,
                   amp: torch.dtype | None = None, release_bn_quirk: bool | None = None):
    """Score `data.val_list` with the config's views; returns (metrics, indices, scores, labels, samples)."""
    from ila.engine.loaders import loader, read_split, video_dataset

    samples, _ = read_split(cfg, "val", class_names)
    clips = cfg.eval.clips if clips is None else clips
    crops = cfg.eval.crops if crops is None else crops
    dataset = video_dataset(cfg, samples, train=False, clips=clips, crops=crops)
    sampler = dist.ShardSampler(len(dataset), env)
    data = loader(dataset, cfg.eval.batch_size, sampler, cfg.data.workers, cfg.train.seed)
    if text is None:
        text = class_text(model, class_names, env.device)
    quirk = cfg.eval.release_bn_quirk if release_bn_quirk is None else release_bn_quirk
    idx, scores, labels = score_videos(model, data, env, text, len(class_names), amp, quirk, progress)
    if idx.numel() != len(dataset) or not torch.equal(idx, torch.arange(len(dataset))):
        raise RuntimeError(f"evaluation scored {idx.numel()} of {len(dataset)} videos; expected each exactly once")
    return classification_metrics(scores, labels), idx, scores, labels, samples


def run_eval(checkpoint: str | Path, overrides: list[str] | tuple = (), output: str | Path | None = None,
             classes: str | None = None) -> dict:
    """`ila eval`: score the validation list with a checkpoint and write metrics, per-class accuracy and
    the confusion matrix (CSV and PNG) to `output` (default: `eval/` in the run directory)."""
    from ila.engine import report
    from ila.engine.checkpoint import load_checkpoint
    from ila.engine.precision import amp_dtype

    model, cfg, saved_names, _ = load_checkpoint(checkpoint, overrides)
    model.fuse(ablation=["bn"] if cfg.eval.release_bn_quirk else [])  # inference only (ila.fuse): same outputs
    names = class_list(cfg, saved_names, classes, overrides, checkpoint)
    check_class_count(model, names)
    env = dist.setup(dist.inference_device(cfg, overrides))
    try:
        model.to(env.device)
        metrics, _, scores, labels, samples = evaluate_split(model, cfg, env, names,
                                                             amp=amp_dtype(cfg.train.amp, env.device))
        run_dir = Path(checkpoint) if Path(checkpoint).is_dir() else Path(checkpoint).parent
        out = Path(output) if output else run_dir / "eval"
        if env.main:
            write_eval_outputs(out, metrics, names, samples, scores, labels, cfg)
            print(f"{len(samples)} videos, {cfg.eval.clips} clip(s) x {cfg.eval.crops} crop(s): "
                  f"{report.format_metrics(metrics)}  ->  {out}")
        return metrics
    finally:
        dist.cleanup()


def write_eval_outputs(out: Path, metrics: dict, names: list[str], samples, scores: torch.Tensor,
                       labels: torch.Tensor, cfg) -> None:
    from ila.engine import report

    summary = {k: v for k, v in metrics.items() if k not in ("per_class", "counts", "confusion")}
    summary.update(clips=cfg.eval.clips, crops=cfg.eval.crops, release_bn_quirk=cfg.eval.release_bn_quirk)
    write_text(out / "metrics.json", json.dumps(summary, indent=2) + "\n")
    report.write_per_class(out / "per_class.csv", out / "per_class.png", names, metrics["per_class"], metrics["counts"])
    report.write_confusion(out / "confusion.csv", out / "confusion.png", names, metrics["confusion"])
    buf = io.StringIO()
    rows = csv.writer(buf, lineterminator="\n")
    rows.writerow(["path", "label", "predicted", "score"])
    for sample, s, y in zip(samples, scores, labels):
        p = int(s.argmax())
        rows.writerow([sample.path, names[int(y)], names[p], f"{float(s[p]):.5f}"])
    write_text(out / "predictions.csv", buf.getvalue())
