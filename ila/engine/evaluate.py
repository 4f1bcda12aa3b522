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
import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ila import jsonsafe
from ila.atomic import (
    output_dir,  # noqa: F401
    write_text,
)
from ila.data.positions import Positions, find_positions, read_positions
from ila.engine import distributed as dist
from ila.engine import report
from ila.engine.classes import ClassText, class_text
from ila.engine.loaders import read_split, video_dataset
from ila.engine.runlock import RunLock
from ila.engine.session import InferenceSession, probabilities, run_videos
from ila.engine.tracking import PointRecorder, tracking_block, tracking_metrics
from ila.errors import UserError
from ila.models.alignment import pair_indices


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


def evaluate_split(model: nn.Module, cfg, env: dist.Env, class_names: list[str], text: ClassText | None = None,
                   clips: int | None = None, crops: int | None = None, progress: bool = True,
                   amp: torch.dtype | None = None, release_bn_quirk: bool | None = None,
                   positions: Positions | None = None):
    """Score `data.val_list` with the config's views (the training loop's validation and `ila eval`); returns
    (metrics, indices, scores, labels, samples, skipped) where the indices, scores and labels cover the readable
    videos and `skipped` lists the others as (index, path, reason). Unreadable videos raise `UnreadableVideos`
    naming all of them unless `data.bad_files=skip`. With the set's object `positions` and a model with alignment
    maps, the same forward passes also give the interactive points, and the metrics gain `point_error`
    (`ila.engine.tracking`)."""
    samples, _ = read_split(cfg, "val", class_names)
    clips = cfg.eval.clips if clips is None else clips
    crops = cfg.eval.crops if crops is None else crops
    dataset = video_dataset(cfg, samples, train=False, clips=clips, crops=crops)
    dataset.bad_file_policy = "mark"          # every bad file found in one pass, then the policy below
    if text is None:
        text = class_text(model, class_names, env.device)
    quirk = cfg.eval.release_bn_quirk if release_bn_quirk is None else release_bn_quirk
    was_training = model.training
    block = tracking_block(model) if positions is not None else None
    score = lambda views: probabilities(model, text, views)  # noqa: E731
    recorder = None if block is None else PointRecorder(score, model, block)
    model.eval()
    try:
        idx, scores, labels, failed = run_videos(dataset, recorder or score, env, cfg.eval.batch_size,
                                                 cfg.data.workers, cfg.train.seed, amp, progress, "eval",
                                                 model if quirk else None)
    finally:
        model.train(was_training)
    points = None
    if recorder is not None and idx.numel():
        scores, points = recorder.split(scores, clips * crops, cfg.model.num_frames - 1)
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
    if points is not None:
        pair_frames = recorder.pair_frames          # None where this process ran no video (torchrun, few videos)
        if pair_frames is None:
            pair_frames = torch.tensor(pair_indices(cfg.model.num_frames, cfg.model.align_pairing)).T
        metrics.update(tracking_metrics(points, [samples[i].path for i in idx.tolist()], positions, pair_frames,
                                        cfg, clips, crops, block))
    return metrics, idx, scores, labels, [samples[i] for i in idx.tolist()], failed


def data_record(cfg, samples) -> dict:
    """Which data an evaluation ran on: the list (or folder), a hash of what it holds, frames, size and views."""
    listed = cfg.data.val_list or cfg.data.train_list
    h = hashlib.sha256()
    if os.path.isfile(listed):
        with open(listed, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    else:                                      # a class folder (or a held-out part of one): its samples
        for s in samples:
            h.update(f"{s.path}\t{s.label}\n".encode("utf-8", "surrogateescape"))
    return {"list": str(listed), "list_sha256": h.hexdigest(), "val_split": cfg.data.val_split or None,
            "frames": cfg.data.num_frames, "input_size": cfg.data.input_size, "clips": cfg.eval.clips,
            "crops": cfg.eval.crops}


def default_output(checkpoint, record) -> Path:
    """Where `ila eval` writes without `--output`: `eval/` in the run directory of an ila checkpoint; for a
    shareable folder, a .safetensors file or a Hub id, `eval/NAME` under the current folder (a folder one would
    upload is never written into: `run_eval` refuses an output inside it)."""
    if record.kind == "checkpoint" and record.path is not None:
        return record.path.parent / "eval"
    name = str(checkpoint).rstrip("/").replace("/", "--").lstrip(".-")
    if not name and os.path.isdir(checkpoint):        # "." or "..": the folder's own name
        name = Path(checkpoint).resolve().name.lstrip(".-")
    return Path("eval", name or "model")


def _shared_folder(checkpoint, record) -> Path | None:
    """The shareable folder (config.json + model.safetensors) the weights were read from, if any: nothing of an
    evaluation (lock, temporaries, results) may be written inside it."""
    if os.path.isdir(checkpoint) and record.kind != "checkpoint":
        return Path(checkpoint).resolve()
    if record.kind == "pretrained" and record.path is not None and (record.path.parent / "config.json").is_file():
        return record.path.parent.resolve()
    return None


def _check_output_place(out: Path, shared: Path | None, given: bool) -> None:
    if shared is None:
        return
    where = out.resolve()
    if where == shared or shared in where.parents:
        raise UserError(f"{'--output ' if given else 'the default output '}{out} lies inside the evaluated folder "
                        f"{shared}, a folder one would share; give an --output outside it"
                        + ("" if given else " (or run ila eval from another folder)"))


def _check_previous(out: Path, provenance: dict, overwrite: bool) -> None:
    """Refuse (one line) to replace an evaluation of other weights or other data in `out`; the same weights on the
    same data may be evaluated again (other views, a newer ila) and replace it."""
    previous = out / "metrics.json"
    if overwrite or not os.path.lexists(previous):
        return
    try:
        saved = jsonsafe.loads(previous.read_bytes(), previous)
    except (OSError, ValueError, UserError):
        saved = None
    weights = saved.get("weights") if isinstance(saved, dict) else None
    data = saved.get("data") if isinstance(saved, dict) else None
    old_weights = weights.get("sha256") if isinstance(weights, dict) else None
    old_data = data.get("list_sha256") if isinstance(data, dict) else None
    if old_weights == provenance["weights"]["sha256"] and old_data == provenance["data"]["list_sha256"]:
        return
    what = ("a metrics.json that is not an ila evaluation" if old_weights is None or old_data is None
            else "the evaluation of other weights" if old_weights != provenance["weights"]["sha256"]
            else "the evaluation of these weights on other data")
    raise UserError(f"--output {out} already holds {what} ({previous}); give another --output, or --overwrite to "
                    f"replace it")


def run_eval(checkpoint: str | Path, overrides: list[str] | tuple = (), output: str | Path | None = None,
             classes: str | None = None, overwrite: bool = False, precision: str = "fp32") -> dict:
    """`ila eval`: score the validation list with a checkpoint and write metrics (with which weights and which
    data produced them), per-class accuracy and the confusion matrix (CSV and PNG) to `output` (default:
    `default_output`).

    An earlier evaluation there (its metrics.json) is replaced only when it was made with the same weights
    (`weights.sha256`) on the same data (`data.list_sha256`), or with `overwrite`; otherwise the run stops in one
    line before any scoring. The output folder is locked while the run writes (`ila.engine.runlock`: the lock
    file holds a process id, is emptied on every exit path, and goes with the folder when a failed run made the
    folder and wrote nothing else); nothing is ever written inside an evaluated shareable folder. `precision`:
    the inference precision (`InferenceSession`), recorded in metrics.json."""
    session = InferenceSession(checkpoint, classes, overrides, distributed=True, precision=precision)
    cfg, names, env = session.cfg, session.class_names, session.env
    out = Path(output) if output else default_output(checkpoint, session.record)
    lock = None
    try:
        provenance = None
        if env.main:
            _check_output_place(out, _shared_folder(checkpoint, session.record), bool(output))
            lock = RunLock(out, "--output folder").acquire()   # one writer; a bad path fails before any scoring
            provenance = {"weights": {"sha256": session.record.sha256, "source": str(checkpoint),
                                      "file": str(session.record.path or "")},
                          "data": data_record(cfg, read_split(cfg, "val", names)[0]),   # every listed video
                          "precision": session.precision}
            _check_previous(out, provenance, overwrite)
        found = find_positions(cfg.data.val_list, cfg.data.root)   # a generated set's object centres
        try:
            metrics, _, scores, labels, samples, skipped = evaluate_split(
                session.model, cfg, env, names, session.text, amp=session.amp,
                positions=read_positions(found, others=True) if found and tracking_block(session.model) is not None
                else None)
        except UnreadableVideos as e:
            if env.main:
                write_skipped(out / "unreadable.csv", e.failed)
            raise UserError(f"{e} (all listed in {out / 'unreadable.csv'})") from None
        if env.main:
            write_eval_outputs(out, metrics, names, samples, scores, labels, cfg, provenance)
            write_skipped(out / "skipped.csv", skipped)
            note = f" (and {len(skipped)} unreadable, skipped: listed in skipped.csv)" if skipped else ""
            tracked = "" if metrics.get("point_error") is None else (
                f"; point_error {metrics['point_error']:.2f} patches (fixed centre: "
                f"{metrics['centre_point_error']:.2f}), block {metrics['point_block']}")
            print(f"{len(samples)} videos{note}, {cfg.eval.clips} clip(s) x {cfg.eval.crops} crop(s): "
                  f"{report.format_metrics(metrics)}{tracked}  ->  {out}")
        return metrics
    finally:
        if lock is not None:
            lock.release()
        session.close()


def write_eval_outputs(out: Path, metrics: dict, names: list[str], samples, scores: torch.Tensor,
                       labels: torch.Tensor, cfg, provenance: dict | None = None) -> None:
    summary = {k: v for k, v in metrics.items() if k not in ("per_class", "counts", "confusion")}
    summary.update(provenance or {})
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
