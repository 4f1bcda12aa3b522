"""One inference session: a model loaded once, made ready for inference, and one loop over videos.

    session = InferenceSession("runs/demo", classes=None, overrides=["eval.clips=2"])
    scored = session.scores(samples)          # every video once: class probabilities averaged over the views
    feats = session.embeddings(samples)       # the same loop, the head's video features instead
    result = session.windows("long.mp4", window=4, stride=2, topk=5)

What every inference entry point (eval, predict, features, export, a server) gets from it, each decided once:
- the weights, through `ila.weights` (any source `ila.create_model` reads; a run directory means its best.pt),
  fused for inference (`ila.fuse`: same outputs, less work) in the inference precision (`precision=`: fp32, the
  default and exact, or bf16; `ila.models.fuse.PRECISIONS`); outputs (probabilities, embeddings) are float32;
- inference-only data settings: no memory cache, no training augmentation; the clip geometry and views of the
  model's preprocessing record, which `--set` may change;
- the class names and the class-count rule (`ila.engine.classes`: a classifier names exactly its outputs) and,
  for a text head, the class-name text features computed once;
- one sharded loop (under torchrun process r reads videos r, r+world, ...; results gathered by index) with one
  rule for unreadable files (marked, reported with their reason, never replaced by another video) and for outputs
  that are not finite numbers (refused, naming the video).
Status goes to stderr; stdout is left to the caller's data.
"""
from __future__ import annotations

import math
import sys
from contextlib import contextmanager
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ila.config import Config, load_config
from ila.data.annotations import Sample
from ila.data.decode import open_video
from ila.data.transforms import TestTransform
from ila.engine import distributed as dist
from ila.engine.classes import ClassText, check_class_count, class_list, class_text
from ila.engine.loaders import loader, video_dataset
from ila.engine.precision import amp_dtype, autocast
from ila.errors import UserError, printable
from ila.models.clip import tokenize
from ila.models.config import ModelConfig
from ila.models.fuse import bf16_cpu_note, parse_precision
from ila.models.ila import ILAModel, parameter_group_map
from ila.models.registry import temporal_variant
from ila.weights.factory import load_model
from ila.weights.sources import read_weights


class Batched(NamedTuple):
    """What `InferenceSession.run` returns: the readable videos' dataset indices (sorted), their outputs `(N, ...)`
    and labels `(N,)`, and the unreadable videos as `(index, path, reason)`, sorted by index."""

    indices: torch.Tensor
    outputs: torch.Tensor
    labels: torch.Tensor
    failed: list


@contextmanager
def release_bn_mode(model: nn.Module, enabled: bool):
    """Yields a function `after_batch()`; once called, alignment BatchNorms use batch statistics (how the Kinetics
    release measured its numbers). The running statistics are restored afterwards."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] if enabled and model else []
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


# the head's modules that CLIP weights leave untrained, left out of a CLIP zero-shot model: without them the text
# head is CLIP's own scoring (the frames' average embedding against the class names' text features)
_ZERO_SHOT_HEAD = {"mit_layers": 0, "mit_pos_embed": False, "prompts_layers": 0}


def zero_shot_config(record, config=None, temporal: str | None = None, overrides: Sequence[str] = ()) -> Config:
    """The config of a model built on CLIP weights (`record`: the towers only) for zero-shot inference, as
    `ila.create_model(config, weights=CLIP, temporal=...)` builds it: `config` a preset name, YAML file, dict,
    `Config` or `ModelConfig` (its frames and size; the weights' geometry must agree), else the defaults (8 frames
    at the CLIP weights' resolution, a text head); `temporal` the variant; then `overrides` (`--set`). The head's
    MIT and video-specific prompts are left out (`_ZERO_SHOT_HEAD`): untrained, they would only perturb CLIP's
    scores. `check_zero_shot` says whether the result is a model CLIP's weights alone make meaningful."""
    if config is None:
        raw = {"model": dict(record.model)}
    elif isinstance(config, Config):
        raw = config.to_dict()
    elif isinstance(config, ModelConfig):
        raw = {"model": config.to_dict()}
    else:
        raw = load_config(config).to_dict()
    raw["model"] = {**raw.get("model", {}), **_ZERO_SHOT_HEAD, **({"temporal": temporal} if temporal else {})}
    return load_config(raw, overrides)


def check_zero_shot(cfg: ModelConfig, source: str) -> None:
    """Refuse (one line) a model on CLIP weights whose outputs would depend on parameters the weights do not hold:
    a temporal variant with parameters of its own (`ila`: the alignment and message modules; `attention`: the
    temporal attention) or with any temporal modelling in the tower (`joint` has only CLIP's parameters but attends
    across frames, which CLIP never learned), a classifier head, or the head's MIT and prompts. What remains is
    CLIP zero-shot: every frame through CLIP's image tower alone, the frame embeddings averaged (`mean`)."""
    variant = temporal_variant(cfg.temporal)
    with torch.device("meta"):                      # counted, never allocated
        groups = set(parameter_group_map(ILAModel(cfg)).values())
    new = sorted(groups - {"clip", "head", "prompts"})
    train = f"train first (ila train --config CONFIG --set train.init={source} model.temporal={cfg.temporal})"
    if new or variant.min_frames > 1:
        what = (f"its {'/'.join(new)} modules would keep their initialisation" if new else
                "its blocks attend across frames, which CLIP never learned")
        raise UserError(f"{source} holds CLIP weights, which have no trained temporal={cfg.temporal} blocks ({what}): "
                        f"{train}, or score it zero-shot as CLIP does with temporal=mean (frames averaged)")
    if cfg.head != "text":
        raise UserError(f"{source} holds CLIP weights: a classifier head would be untrained on them; zero-shot scores "
                        f"class names with CLIP's text tower (model.head=text), or {train}")
    extra = [f"model.{k}={str(getattr(cfg, k)).lower()}" for k, v in _ZERO_SHOT_HEAD.items() if getattr(cfg, k) != v]
    if extra:
        raise UserError(f"{source} holds CLIP weights: {', '.join(extra)} adds head modules that would be untrained "
                        f"on them (zero-shot needs {', '.join(f'model.{k}={str(v).lower()}' for k, v in _ZERO_SHOT_HEAD.items())}), "
                        f"or {train}")


class InferenceSession:
    """A model ready for inference (see the module docstring). `weights`: any source `ila.create_model` reads;
    `classes`: a class-name file, `a,b,c`, a shipped list or a list (text heads: any names, zero-shot;
    classifiers: exactly as many names as outputs); `overrides`: `--set` assignments; `distributed`: join the
    torchrun process group (eval and features); `device`: default `auto` unless `--set device=...`;
    `need_classes=False`: a model without class names is fine (embeddings).

    CLIP weights (a file or a name such as `ViT-B-32:openai`) hold the towers of a model, not a trained video model:
    they are accepted with `temporal=` and/or `config=` (a preset name, YAML file, `Config` or `ModelConfig`: frames
    and size; default 8 frames at the weights' resolution) and scored zero-shot, CLIP's baseline, where nothing in
    the path would be untrained (`temporal="mean"`; see `check_zero_shot`). For trained weights `temporal`, when
    given, must name the model's own variant, and `config` is refused (their config is their own).
    `precision`: the inference precision `ila.fuse` casts the model to (`PRECISIONS`: fp32, bf16), checked before
    any weights are read; where bf16 runs on a CPU without bf16 units one line on stderr says so."""

    def __init__(self, weights, classes: str | list[str] | None = None, overrides: Sequence[str] = (),
                 distributed: bool = False, device: str | None = None, quiet: bool = False,
                 need_classes: bool = True, temporal: str | None = None, config=None, precision: str = "fp32"):
        overrides = list(overrides)
        self.precision = parse_precision(precision)
        record = read_weights(weights, quiet=quiet)
        if not record.complete:
            if not record.tower_only or (temporal is None and config is None):
                zero_shot = (f", or score it zero-shot as CLIP with temporal='mean' and class names (ila predict "
                             f"--model {record.source} --temporal mean --classes a,b,c)" if record.tower_only else "")
                raise UserError(f"{record.source} holds {record.kind} weights, the towers of a model but not a trained "
                                f"video model: train one from them (train.init={record.source}){zero_shot}")
            cfg = zero_shot_config(record, config, temporal, overrides)
            check_zero_shot(cfg.model, record.source)
            self.model, self.cfg, self.record = load_model(record, cfg)
        else:
            if config is not None:
                raise UserError(f"{record.source} is a trained {record.kind} model with its own config; config= builds "
                                f"a model on CLIP weights (change frames, size or views of this one with overrides)")
            self.model, self.cfg, self.record = load_model(record, overrides=overrides)
            if temporal is not None and temporal != self.cfg.model.temporal:
                raise UserError(f"{record.source} is a trained temporal={self.cfg.model.temporal} model, not "
                                f"temporal={temporal}; --temporal chooses the variant of CLIP weights only")
        self.source = weights
        cfg = self.cfg
        cfg.data.cache, cfg.data.augment = "none", "cpu"   # inference reads each video once, as it is
        device = device or dist.inference_device(cfg, overrides)
        self.env = dist.setup(device) if distributed else dist.Env(device=dist.pick_device(device))
        self.model.fuse(ablation=["bn"] if cfg.eval.release_bn_quirk else [], precision=self.precision)
        note = bf16_cpu_note() if self.precision == "bf16" and self.env.device.type == "cpu" else None
        if note and self.env.main and not quiet:
            print(note, file=sys.stderr)
        self.model.to(self.env.device)
        known = classes or self.record.class_names or cfg.data.class_names
        if need_classes or known:
            self.class_names = class_list(cfg, self.record.class_names, classes, overrides, weights, self.model)
            check_class_count(self.model, self.class_names, "--classes" if classes else "class list", weights)
            self.text = class_text(self.model, self.class_names, self.env.device)
        else:                                  # embeddings need no class names
            self.class_names, self.text = [], ClassText()
        self.amp = amp_dtype(cfg.train.amp, self.env.device)

    @property
    def main(self) -> bool:
        return self.env.main

    # ------------------------------------------------------------------ data
    def samples(self, paths: Sequence[str]) -> list[Sample]:
        return [Sample(str(p), 0) for p in paths]

    def dataset(self, samples: Sequence[Sample], clips: int | None = None, crops: int | None = None):
        """Test views of the samples (`eval.clips` x `eval.crops` unless given); unreadable files are marked."""
        clips = self.cfg.eval.clips if clips is None else clips
        crops = self.cfg.eval.crops if crops is None else crops
        dataset = video_dataset(self.cfg, list(samples), train=False, clips=clips, crops=crops)
        dataset.bad_file_policy = "mark"            # a bad file is reported, never replaced by another video
        return dataset

    # ------------------------------------------------------------------ the loop
    def run(self, samples: Sequence[Sample], fn: Callable[[torch.Tensor], torch.Tensor], clips: int | None = None,
            crops: int | None = None, batch_size: int | None = None, desc: str = "predict",
            progress: bool = True, release_bn_quirk: bool = False) -> Batched:
        """`fn` on the test views of every readable sample once (`run_videos`)."""
        return run_videos(self.dataset(samples, clips, crops), fn, self.env, batch_size or self.cfg.eval.batch_size,
                          self.cfg.data.workers, self.cfg.train.seed, self.amp, progress, desc,
                          self.model if release_bn_quirk else None)

    # ------------------------------------------------------------------ what the loop computes
    def probabilities(self, views: torch.Tensor) -> torch.Tensor:
        """Views `(B, V, T, 3, S, S)` -> class probabilities `(B, K)`, the per-view softmax averaged."""
        return probabilities(self.model, self.text, views)

    def embed(self, views: torch.Tensor, per_frame: bool = False) -> torch.Tensor:
        """Views `(B, V, T, 3, S, S)` -> the head's video features `(B, E)` (the MIT output the head scores) or the
        frame embeddings `(B, T, E)` that MIT reads, averaged over the V views."""
        b, v = views.shape[:2]
        frames, _, _, _ = self.model.forward_features(views.flatten(0, 1), class_only=True)
        out = frames if per_frame else self.model.head.mit(frames)
        return out.float().view(b, v, *out.shape[1:]).mean(1)

    def scores(self, samples: Sequence[Sample], clips: int | None = None, crops: int | None = None,
               progress: bool = True, desc: str = "predict", release_bn_quirk: bool | None = None,
               forward: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Batched:
        """Class probabilities of every sample (`run`). `forward`: computes `probabilities` elsewhere (a server's
        batching worker, which owns the model); then the release BatchNorm quirk is off, as it would switch the
        shared model's BatchNorms (it changes nothing for a single video: it acts from the second batch on)."""
        quirk = self.cfg.eval.release_bn_quirk if release_bn_quirk is None else release_bn_quirk
        return self.run(samples, forward or self.probabilities, clips, crops, desc=desc, progress=progress,
                        release_bn_quirk=quirk and forward is None)

    def embeddings(self, samples: Sequence[Sample], per_frame: bool = False, clips: int = 1,
                   batch_size: int | None = None) -> Batched:
        return self.run(samples, lambda v: self.embed(v, per_frame), clips, 1, batch_size, desc="features")

    @torch.no_grad()
    def text_embeddings(self, names: list[str]) -> torch.Tensor:
        """Names -> CLIP text features `(K, E)` of a text-head model."""
        if getattr(self.model, "text", None) is None:
            raise UserError("--text: this model has a classifier head and no text tower, so it has no text embeddings")
        tokens = tokenize(names, context_length=self.model.cfg.context_length).to(self.env.device)
        return self.model.encode_text(tokens).float().cpu()

    # ------------------------------------------------------------------ one video
    def ranked(self, row: torch.Tensor, topk: int) -> list[dict]:
        p, i = row.topk(min(topk, len(self.class_names)))
        return [{"class": self.class_names[c], "probability": round(float(q), 6)} for q, c in zip(p.tolist(), i.tolist())]

    def predict(self, paths: Sequence[str], topk: int = 5, progress: bool = True,
                forward: Callable[[torch.Tensor], torch.Tensor] | None = None) -> list[dict]:
        """For each video: its path and the top-k classes with probabilities, or its path and an `error`
        (one unreadable video does not stop the others). `forward`: as in `scores`."""
        rows: dict = {}
        if paths:
            scored = self.scores(self.samples(paths), progress=progress, forward=forward)
            rows.update((paths[i], row) for i, row in zip(scored.indices.tolist(), scored.outputs))
            rows.update((paths[i], reason) for i, _, reason in scored.failed)
        return [{"video": path, "error": rows[path]} if isinstance(rows[path], str)
                else {"video": path, "predictions": self.ranked(rows[path], topk)} for path in paths]

    def first_view(self, path: str) -> torch.Tensor:
        """The first test view of one video, `(1, T, 3, S, S)`, on the session's device."""
        dataset = self.dataset(self.samples([path]))
        item = dataset[0]
        if item.get("error"):
            raise UserError(f"{path}: {item['error']}")
        video = item["video"]
        return (video[:1] if video.dim() == 5 else video[None]).to(self.env.device)

    @torch.no_grad()
    def windows(self, path: str, window: float, stride: float, topk: int,
                forward: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict:
        """Sliding windows of `window` seconds every `stride` seconds over one video (`window_spans`: at least one
        frame long, at most `MAX_WINDOWS`), timed by the frames' own timestamps (`VideoReader.frame_times`, read
        without decoding), so a variable frame rate or a wrong declared rate cannot shift them: window [start, end)
        holds the frames shown then, T of them spread evenly over it (the frame on screen at the middle of each of
        T equal parts; `window_frames`), read by seeking (only those frames are decoded), `eval.batch_size`
        windows at a time, so memory does not grow with the video's length. A last window ending at the video's
        end is added when the stride leaves the tail uncovered. Returns the video's duration (from the
        timestamps) and, per window, its start/end time (s), the top-k and all class probabilities. `forward`:
        computes `probabilities` of the views elsewhere (a server's batching worker)."""
        cfg, t = self.cfg, self.cfg.data.num_frames
        transform = self.window_transform
        with open_video(path) as reader:
            if not hasattr(reader, "frame_times"):
                raise UserError(f"{path}: --window needs a video file with a frame rate (a frame folder has none)")
            times, duration, _ = reader.frame_times()
            spans = window_spans(duration, window, stride, frame=duration / len(times))
            out = []
            for first in range(0, len(spans), cfg.eval.batch_size):
                batch = spans[first:first + cfg.eval.batch_size]
                indices = [window_frames(times, start, end, t) for start, end in batch]
                frames = reader.read(np.concatenate(indices), short_side=transform.short_side)
                probs = self.score_clips(frames, len(batch), transform, path, forward)
                out += [self.window_result(start, end, row, topk) for (start, end), row in zip(batch, probs)]
        return {"video": path, "duration": round(duration, 3), "window": window, "stride": stride, "windows": out}

    @property
    def window_transform(self) -> TestTransform:
        """The test transform of a window's frames (the model's size, `eval.crops` crops)."""
        return TestTransform(self.cfg.data.input_size, self.cfg.eval.crops)

    @torch.no_grad()
    def score_clips(self, frames: np.ndarray, count: int, transform: TestTransform, name: str,
                    forward: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """Frames uint8 `(count * T, H, W, 3)`, `count` clips of T frames one after the other (decoded at the
        transform's short side) -> class probabilities `(count, K)` on the CPU; outputs that are not finite
        numbers are a UserError naming `name`. `forward`: computes `probabilities` of the views elsewhere (a
        server's batching worker)."""
        t = self.cfg.data.num_frames
        clips = torch.from_numpy(frames).permute(0, 3, 1, 2).reshape(count, t, 3, *frames.shape[1:3])
        views = torch.stack([transform(c) for c in clips])                     # (B, crops, T, 3, S, S)
        with autocast(self.amp, self.env.device):
            probs = (forward or self.probabilities)(views.to(self.env.device)).float().cpu()
        if not torch.isfinite(probs).all():
            raise UserError(f"the model's outputs are not finite numbers (NaN or inf) for {name}: the "
                            f"weights are broken (a diverged run or a damaged checkpoint)")
        return probs

    def window_result(self, start: float, end: float, row: torch.Tensor, topk: int) -> dict:
        """One window's entry: start/end (s), the top-k and all class probabilities `row` `(K,)`."""
        return {"start": round(start, 3), "end": round(end, 3), "predictions": self.ranked(row, topk),
                "probabilities": row}

    def close(self) -> None:
        dist.cleanup()


def probabilities(model: nn.Module, text: ClassText, views: torch.Tensor) -> torch.Tensor:
    """Views `(B, V, T, 3, S, S)` -> class probabilities `(B, K)`: the per-view softmax, averaged over the views."""
    b, v = views.shape[:2]
    logits = model(views.flatten(0, 1), **text.kwargs()).logits
    return logits.float().softmax(-1).view(b, v, -1).mean(1)


@torch.no_grad()
def run_videos(dataset, fn: Callable[[torch.Tensor], torch.Tensor], env: dist.Env, batch_size: int, workers: int,
               seed: int, amp: torch.dtype | None = None, progress: bool = True, desc: str = "eval",
               release_bn_model: nn.Module | None = None) -> Batched:
    """The one loop over videos: `fn(views (B, V, T, 3, S, S)) -> (B, ...)` on every readable video of `dataset`
    (its bad files marked: `bad_file_policy="mark"`) exactly once (this process's share under torchrun), gathered
    on every process in index order. Unreadable videos are collected, never run; a non-finite output is a
    UserError naming the video. `release_bn_model`: its alignment BatchNorms run on batch statistics after the
    first batch (`release_bn_mode`)."""
    sampler = dist.ShardSampler(len(dataset), env)
    data = loader(dataset, batch_size, sampler, min(workers, max(len(sampler) - 1, 0)), seed)
    indices, outputs, labels, failed = [], [], [], []
    bar = tqdm(data, desc=desc, disable=not (progress and env.main and len(dataset) > 1), dynamic_ncols=True,
               unit="batch", leave=False, file=sys.stderr)
    try:
        with release_bn_mode(release_bn_model, release_bn_model is not None) as after_batch:
            for batch in bar:
                errors = batch.get("error") or [""] * len(batch["index"])
                good = torch.tensor([not e for e in errors])
                failed += [(i, dataset.samples[i].path, e) for i, e in zip(batch["index"].tolist(), errors) if e]
                if not good.any():
                    continue
                video = (batch["video"] if good.all() else batch["video"][good]).to(env.device, non_blocking=True)
                if video.dim() == 5:                       # (B, T, 3, S, S): a single view
                    video = video[:, None]
                with autocast(amp, env.device):
                    out = fn(video).float()
                index = batch["index"][good].cpu()
                finite = torch.isfinite(out.flatten(1)).all(1).cpu()
                if not finite.all():
                    name = dataset.samples[int(index[~finite][0])].path
                    raise UserError(f"the model's outputs are not finite numbers (NaN or inf) for {name}: the "
                                    f"weights are broken (a diverged run or a damaged checkpoint)")
                indices.append(index)
                outputs.append(out.cpu())
                labels.append(batch["label"][good].cpu())
                after_batch()
    finally:
        bar.close()
    mine = (torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long),
            torch.cat(outputs) if outputs else None,
            torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long), failed)
    parts = dist.gather(mine, env)
    idx = torch.cat([p[0] for p in parts])
    order = idx.argsort()
    outs = [p[1] for p in parts if p[1] is not None]
    result = Batched(idx[order], torch.cat(outs)[order] if outs else torch.zeros(0),
                     torch.cat([p[2] for p in parts])[order], sorted(f for p in parts for f in p[3]))
    seen = torch.cat([result.indices, torch.tensor([f[0] for f in result.failed], dtype=torch.long)]).sort().values
    if not torch.equal(seen, torch.arange(len(dataset))):
        raise RuntimeError(f"ran {seen.numel()} of {len(dataset)} videos; expected each exactly once")
    return result


# the most windows one video is cut into (`window_spans`): more is refused, naming the --stride that fits
MAX_WINDOWS = 10_000
# the shortest --window / --stride accepted before any video is read (one frame at 1000 fps); each video's own
# frame interval is its minimum (`window_spans`' `frame`)
MIN_WINDOW_SECONDS = 0.001


def window_spans(duration: float, window: float, stride: float, frame: float = 0.0) -> list[tuple[float, float]]:
    """(start, end) seconds of sliding windows over a video of `duration` seconds (one window when shorter).
    `window` and `stride` must be finite, at least `MIN_WINDOW_SECONDS` and at least `frame` (one frame's
    duration: the video's average frame interval); at most `MAX_WINDOWS` windows. Otherwise a one-line
    UserError names the minimum or the stride that fits (checked before any list is built)."""
    duration, given = _finite(duration), duration
    if duration is None or not duration > 0:
        raise UserError(f"the video's duration {_shown(given)} s is not a positive number of seconds; windows cannot "
                        f"be placed in it")
    frame, given = _finite(frame), frame
    if frame is None or not frame >= 0:
        raise UserError(f"the video's frame duration {_shown(given)} s is not a number of seconds >= 0")
    window = check_window_seconds("--window", window, frame)
    stride = check_window_seconds("--stride", stride, frame)
    if duration <= window:
        return [(0.0, duration)]
    steps = (duration - window) / stride                  # windows after the first (finite: both checked)
    count = _window_count(duration, window, stride) if steps < MAX_WINDOWS else math.inf
    if count > MAX_WINDOWS:
        fits = round_up((duration - window) / (MAX_WINDOWS - 2))
        while _window_count(duration, window, fits) > MAX_WINDOWS:
            fits = round_up(fits * 1.01)
        many = (f"{count:,}" if count < math.inf else f"{int(steps) + 1:,}" if steps < 1e15 else
                f"about {steps:.1e}" if math.isfinite(steps) else "countless")
        raise UserError(f"--stride {stride:g} over a {duration:.4g} s video gives {many} windows, more than the "
                        f"{MAX_WINDOWS:,} allowed per video; use a larger --stride ({fits:g} or more)")
    spans = [(k * stride, k * stride + window) for k in range(int(steps + 1e-9) + 1)]
    if spans[-1][1] < duration - 1e-6:
        spans.append((duration - window, duration))
    return spans


def check_window_seconds(flag: str, value, frame: float = 0.0):
    """`value` of `flag` (--window or --stride) as a float, when it is a finite number of seconds of at least
    `MIN_WINDOW_SECONDS` and at least `frame` (one frame of the video, when known); else a one-line UserError
    naming the minimum."""
    seconds = _finite(value)
    if seconds is None or not seconds > 0:
        raise UserError(f"{flag} {_shown(value)}: give a {'window length' if flag == '--window' else 'stride'} in "
                        f"seconds > 0")
    value = seconds
    if value < MIN_WINDOW_SECONDS:
        raise UserError(f"{flag} {value:g}: give at least {MIN_WINDOW_SECONDS:g} s (one frame at "
                        f"{1 / MIN_WINDOW_SECONDS:g} fps)")
    if value < frame * (1 - 1e-9):
        raise UserError(f"{flag} {value:g} s is shorter than one frame of this video ({frame:.4g} s, {1 / frame:.4g} "
                        f"fps); use {flag} {round_up(frame):g} or more")
    return value


def _window_count(duration: float, window: float, stride: float) -> int:
    """How many windows `window_spans` gives (the regular ones and a last one ending at the end), not built."""
    if duration <= window:
        return 1
    count = int((duration - window) / stride + 1e-9) + 1
    return count + ((count - 1) * stride + window < duration - 1e-6)


def _shown(value) -> str:
    """A value as an error line quotes it: printable, and cut short when long (an int of 400 digits)."""
    text = printable(str(value))
    return text if len(text) <= 24 else f"{text[:16]}... ({len(text)} characters)"


def _finite(value) -> float | None:
    """`value` as a float when it is a finite real number (not a bool, a string or an int too large), else None."""
    if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def round_up(value: float, digits: int = 4) -> float:
    """`value` rounded up to `digits` significant digits (a minimum to name that is itself accepted)."""
    if not value > 0:
        return value
    unit = 10.0 ** (math.floor(math.log10(value)) - digits + 1)
    return float(f"{math.ceil(value / unit - 1e-9) * unit:.{digits}g}")


def window_frames(times: np.ndarray, start: float, end: float, t: int) -> np.ndarray:
    """The `t` frame indices a window [start, end) reads, from the frames' times (seconds, non-decreasing): the
    frame on screen at the middle of each of t equal parts of the window, kept to the frames whose times fall in
    the window (where none does, the one on screen at its start). At a constant frame rate, with the window's
    ends on frames lo and hi, these are the frames lo + floor((k + 0.5) * (hi - lo) / t), k < t, as before."""
    tol = 1e-9 * max(1.0, abs(float(times[-1])))             # timestamps and k*stride carry float rounding
    lo = int(np.searchsorted(times, start - tol, side="left"))
    hi = int(np.searchsorted(times, end - tol, side="left"))
    if hi <= lo:                                            # no frame starts inside: the one on screen at start
        lo = max(min(lo, len(times)) - 1, 0)
        hi = lo + 1
    middles = start + (np.arange(t) + 0.5) * ((end - start) / t)
    shown = np.searchsorted(times, middles + tol, side="right") - 1
    return np.clip(shown, lo, hi - 1).astype(np.int64)
