"""Evaluation: every video scored once, from one or many views, and the accuracies that follow.

A video seen through `clips` temporal views times `crops` spatial views gets the mean of the per-view
softmax scores. Under DDP process r scores videos r, r+world, ... (no padding, no dropped tail) and
the scores are gathered by video index, so each video counts exactly once.

Metrics: top-1 and top-5 accuracy over videos, mean class accuracy (the mean over classes of each
class's top-1), per-class accuracy and the confusion matrix (rows: true class, columns: predicted).

`release_bn_quirk` reproduces how the Kinetics release measured its numbers: after the first batch
the alignment BatchNorms run on batch statistics (train mode) while alignment uses one point. It is
off by default; the model's running statistics are restored afterwards.

Unreadable videos are collected in one pass and never replaced by another video: under `data.bad_files`
`error` (the evaluation default) the run stops naming every one of them; under `skip` the metrics cover
the readable videos only, say how many they cover, and the skipped ones are listed in `skipped.csv`.
Outputs that are not finite numbers stop the evaluation.
"""
from __future__ import annotations

import csv
import io
import json
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from ila.engine import distributed as dist
from ila.engine.atomic import write_text
from ila.engine.classes import ClassText, check_class_count, class_list, class_text
from ila.engine.precision import autocast
from ila.errors import UserError


class Scored(NamedTuple):
    """What `score_videos` returns: the readable videos' dataset indices (sorted), their scores `(N, K)` and
    labels `(N,)`, and the unreadable videos as `(index, path, reason)`, sorted by index."""

    indices: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    failed: list


class UnreadableVideos(UserError):
    """Videos that could not be read; `failed` holds (index, path, reason) of every one of them."""

    def __init__(self, message: str, failed: list):
        super().__init__(message)
        self.failed = failed


def _named(failed: list, total: int, most: int = 10) -> str:
    shown = "; ".join(f"{path} ({reason})" for _, path, reason in failed[:most])
    more = f"; and {len(failed) - most} more" if len(failed) > most else ""
    return f"{len(failed)} of {total} videos cannot be read: {shown}{more}"


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
                 desc: str = "eval") -> Scored:
    """Every video of the loader's dataset scored once, gathered on all processes (see `Scored`). Items whose
    `error` is set (unreadable files) are not run through the model. Non-finite scores raise a UserError."""
    from tqdm import tqdm

    was_training = model.training
    model.eval()
    indices, scores, labels, failed = [], [], [], []
    samples = getattr(loader.dataset, "samples", None)
    bar = tqdm(loader, desc=desc, disable=not (progress and env.main), dynamic_ncols=True, unit="batch", leave=False)
    try:
        with release_bn_mode(model, release_bn_quirk) as after_batch:
            for batch in bar:
                errors = batch.get("error") or [""] * len(batch["index"])
                good = torch.tensor([not e for e in errors])
                for i, e in zip(batch["index"].tolist(), errors):
                    if e:
                        failed.append((i, samples[i].path if samples is not None else str(i), e))
                if not good.any():
                    continue
                video = (batch["video"] if good.all() else batch["video"][good]).to(env.device, non_blocking=True)
                if video.dim() == 5:                       # (B, T, 3, S, S): a single view
                    video = video[:, None]
                b, v = video.shape[:2]
                with autocast(amp, env.device):
                    logits = model(video.flatten(0, 1), **text.kwargs()).logits
                probs = logits.float()[:, :num_classes].softmax(-1).view(b, v, -1).mean(1)
                index = batch["index"][good].cpu()
                if not torch.isfinite(probs).all():
                    row = int(index[~torch.isfinite(probs).all(1).cpu()][0])
                    name = samples[row].path if samples is not None else f"video {row}"
                    raise UserError(f"the model's outputs are not finite numbers (NaN or inf) for {name}: the "
                                    f"weights are broken (a diverged run or a damaged checkpoint)")
                indices.append(index)
                scores.append(probs.cpu())
                labels.append(batch["label"][good].cpu())
                after_batch()
    finally:
        bar.close()
        model.train(was_training)
    mine = (torch.cat(indices), torch.cat(scores), torch.cat(labels), failed) if indices else (
        torch.zeros(0, dtype=torch.long), torch.zeros(0, num_classes), torch.zeros(0, dtype=torch.long), failed)
    parts = dist.gather(mine, env)
    idx = torch.cat([p[0] for p in parts])
    order = idx.argsort()
    return Scored(idx[order], torch.cat([p[1] for p in parts])[order], torch.cat([p[2] for p in parts])[order],
                  sorted(f for p in parts for f in p[3]))


def evaluate_split(model: nn.Module, cfg, env: dist.Env, class_names: list[str], text: ClassText | None = None,
                   clips: int | None = None, crops: int | None = None, progress: bool = True,
                   amp: torch.dtype | None = None, release_bn_quirk: bool | None = None):
    """Score `data.val_list` with the config's views; returns (metrics, indices, scores, labels, samples,
    skipped) where the indices, scores and labels cover the readable videos and `skipped` lists the others as
    (index, path, reason). Unreadable videos raise `UnreadableVideos` naming all of them unless
    `data.bad_files=skip`."""
    from ila.engine.loaders import loader, read_split, video_dataset

    samples, _ = read_split(cfg, "val", class_names)
    clips = cfg.eval.clips if clips is None else clips
    crops = cfg.eval.crops if crops is None else crops
    dataset = video_dataset(cfg, samples, train=False, clips=clips, crops=crops)
    dataset.bad_file_policy = "mark"          # every bad file found in one pass, then the policy below
    sampler = dist.ShardSampler(len(dataset), env)
    data = loader(dataset, cfg.eval.batch_size, sampler, cfg.data.workers, cfg.train.seed)
    if text is None:
        text = class_text(model, class_names, env.device)
    quirk = cfg.eval.release_bn_quirk if release_bn_quirk is None else release_bn_quirk
    idx, scores, labels, failed = score_videos(model, data, env, text, len(class_names), amp, quirk, progress)
    seen = torch.cat([idx, torch.tensor([f[0] for f in failed], dtype=torch.long)]).sort().values
    if not torch.equal(seen, torch.arange(len(dataset))):
        raise RuntimeError(f"evaluation scored {seen.numel()} of {len(dataset)} videos; expected each exactly once")
    if failed and cfg.data.bad_files != "skip":
        raise UnreadableVideos(_named(failed, len(dataset)) + "; fix or remove them, or set data.bad_files=skip "
                               "to evaluate the others", failed)
    if idx.numel() == 0:
        raise UnreadableVideos(f"none of the {len(dataset)} videos of {cfg.data.val_list} can be read "
                               f"(first: {failed[0][1]}: {failed[0][2]})", failed)
    metrics = classification_metrics(scores, labels)
    metrics["skipped"] = len(failed)
    bad = [k for k in ("top1", "top5", "mean_class_acc") if not np.isfinite(metrics[k])]
    if bad:
        raise UserError(f"evaluation gave a non-finite {bad[0]}; the scores or labels are broken")
    return metrics, idx, scores, labels, [samples[i] for i in idx.tolist()], failed


def run_eval(checkpoint: str | Path, overrides: list[str] | tuple = (), output: str | Path | None = None,
             classes: str | None = None) -> dict:
    """`ila eval`: score the validation list with a checkpoint and write metrics, per-class accuracy and
    the confusion matrix (CSV and PNG) to `output` (default: `eval/` in the run directory)."""
    from ila.engine import report
    from ila.engine.checkpoint import load_checkpoint
    from ila.engine.precision import amp_dtype

    from ila.engine.atomic import output_dir
    from ila.engine.runlock import RunLock

    model, cfg, saved_names, _ = load_checkpoint(checkpoint, overrides)
    model.fuse(ablation=["bn"] if cfg.eval.release_bn_quirk else [])  # inference only (ila.fuse): same outputs
    names = class_list(cfg, saved_names, classes, overrides, checkpoint, model)
    check_class_count(model, names)
    run_dir = Path(checkpoint) if Path(checkpoint).is_dir() else Path(checkpoint).parent
    from ila.hub import is_hub_id                          # a Hub id ORG/NAME: eval/ORG--NAME here
    out = Path(output) if output else Path("eval", str(checkpoint).replace("/", "--")) if is_hub_id(checkpoint) else run_dir / "eval"
    output_dir(out, "--output folder")                 # a bad output path fails before any scoring
    env = dist.setup(dist.inference_device(cfg, overrides))
    lock = RunLock(out, "eval output folder").acquire() if env.main else None   # one writer; stale temporaries go
    try:
        model.to(env.device)
        try:
            metrics, _, scores, labels, samples, skipped = evaluate_split(
                model, cfg, env, names, amp=amp_dtype(cfg.train.amp, env.device))
        except UnreadableVideos as e:
            if env.main:
                write_skipped(out / "unreadable.csv", e.failed)
            raise UserError(f"{e} (all listed in {out / 'unreadable.csv'})") from None
        if env.main:
            write_eval_outputs(out, metrics, names, samples, scores, labels, cfg)
            write_skipped(out / "skipped.csv", skipped)
            note = f" (and {len(skipped)} unreadable, skipped: listed in skipped.csv)" if skipped else ""
            print(f"{len(samples)} videos{note}, {cfg.eval.clips} clip(s) x {cfg.eval.crops} crop(s): "
                  f"{report.format_metrics(metrics)}  ->  {out}")
        return metrics
    finally:
        if lock is not None:
            lock.release()
        dist.cleanup()


def write_eval_outputs(out: Path, metrics: dict, names: list[str], samples, scores: torch.Tensor,
                       labels: torch.Tensor, cfg) -> None:
    from ila.engine import report

    summary = {k: v for k, v in metrics.items() if k not in ("per_class", "counts", "confusion")}
    summary.update(clips=cfg.eval.clips, crops=cfg.eval.crops, release_bn_quirk=cfg.eval.release_bn_quirk,
                   covers=f"{metrics['videos']} readable videos" + (f" ({metrics['skipped']} unreadable skipped)"
                                                                     if metrics.get("skipped") else ""))
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


def write_skipped(path: Path, failed: list) -> None:
    """`path, reason` of each unreadable video (the file is removed when there are none)."""
    if not failed:
        path.unlink(missing_ok=True)
        return
    buf = io.StringIO()
    rows = csv.writer(buf, lineterminator="\n")
    rows.writerow(["path", "reason"])
    rows.writerows([path_, reason] for _, path_, reason in failed)
    write_text(path, buf.getvalue())
