"""Embeddings: videos (and class names) in, feature vectors out, for retrieval, probing or anomaly detection.

    ila features --checkpoint C videos/ list.txt clip.mp4 --out feats.safetensors [--per-frame] [--clips 4]
    ila features --checkpoint C --text "juggling,surfing" --out text.safetensors

A video's embedding is the head's video feature: the MIT output `(E,)` that the head scores (the video-text
head compares it with the prompted class-name features; the classifier head normalises and classifies it).
`--per-frame` gives the frame embeddings `(T, E)` that MIT reads (`ln_post(class token) @ proj` of each frame).
With `--clips N` every video is seen through N temporal views (the evaluation's deterministic views, centre
crop) and the embeddings are averaged over them; frame t of every view lies in segment t, so per-frame
embeddings are averaged segment by segment. Text embeddings are the CLIP text features `(K, E)` of the names
(text-head models), before the video-specific prompts.

Output: `.safetensors` holds `video_features` (or `frame_features`) and/or `text_features`, float32, with the
video paths, the names and the skipped files as JSON in its metadata; `.npy` holds one array, its paths beside
it in `FILE.json`. Unreadable videos are listed and skipped, never replaced. Under `torchrun` every process
embeds the videos r, r+world, ... and process 0 writes the file, in input order.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ila.engine import distributed as dist
from ila.engine.atomic import atomic_path, write_text
from ila.errors import UserError

FORMAT = "ila-features/1"
LIST_SUFFIXES = (".txt", ".lst", ".list", ".csv")


def video_inputs(inputs: list[str]) -> list[str]:
    """Video files as given, the video files inside each folder (sorted), and the paths of list files (one per
    line, a trailing integer label ignored; relative to the current folder, else to the list's folder)."""
    from ila.engine.predict import video_files

    found: list[str] = []
    for item in inputs:
        if os.path.isfile(item) and item.lower().endswith(LIST_SUFFIXES):
            found += _read_list(item)
        else:
            found += video_files([item])
    return found


def _read_list(path: str) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a readable list of video paths ({type(e).__name__})") from None
    out = []
    for line in lines:
        line = line.strip().split(",")[0].strip() if path.lower().endswith(".csv") else line.strip()
        if not line or line.startswith("#"):
            continue
        head, _, tail = line.rpartition(" ")
        entry = head.strip() if head and tail.isdigit() else line
        if not os.path.isabs(entry) and not os.path.exists(entry):
            beside = os.path.join(os.path.dirname(path), entry)
            entry = beside if os.path.exists(beside) else entry
        out.append(entry)
    if not out:
        raise UserError(f"{path}: the list names no videos")
    return out


class _Views(Dataset):
    """Test views of each video; an unreadable video becomes a marker (index, reason), never a substitute."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        from ila.data.decode import VideoReadError

        try:
            return {"index": index, "video": self.dataset[index]["video"], "error": ""}
        except VideoReadError as e:
            return {"index": index, "video": None, "error": str(e)}


def _collate(items: list[dict]) -> dict:
    good = [it for it in items if it["video"] is not None]
    return {"index": torch.tensor([it["index"] for it in good], dtype=torch.long),
            "video": torch.stack([it["video"] for it in good]) if good else None,
            "bad": [(it["index"], it["error"]) for it in items if it["video"] is None]}


@torch.no_grad()
def embed_videos(model, video: torch.Tensor, per_frame: bool = False) -> torch.Tensor:
    """Views `(B, V, T, 3, S, S)` -> video embeddings `(B, E)` (MIT output) or frame embeddings `(B, T, E)`,
    averaged over the V views."""
    b, v = video.shape[:2]
    frames, _, _, _ = model.forward_features(video.flatten(0, 1), class_only=True)  # only class tokens are read
    out = frames if per_frame else model.head.mit(frames)
    return out.float().view(b, v, *out.shape[1:]).mean(1)


@torch.no_grad()
def embed_text(model, names: list[str], device) -> torch.Tensor:
    """Names -> CLIP text features `(K, E)` of a text-head model."""
    from ila.models.clip import tokenize

    if getattr(model, "text", None) is None:
        raise UserError("--text: this model has a classifier head and no text tower, so it has no text embeddings")
    return model.encode_text(tokenize(names, context_length=model.cfg.context_length).to(device)).float().cpu()


def run_features(checkpoint: str | Path, inputs: list[str], out: str | Path, per_frame: bool = False,
                 clips: int = 1, text: str | None = None, text_file: str | None = None,
                 batch_size: int | None = None, overrides: list[str] | tuple = ()) -> dict:
    """`ila features`: write the embeddings of the videos (and names) to `out`; returns what was written."""
    from ila.engine.checkpoint import load_checkpoint
    from ila.engine.classes import class_names_from

    out = Path(out)
    if out.suffix not in (".safetensors", ".npy"):
        raise UserError(f"--out {out}: end it with .safetensors (features, paths and names) or .npy (one array)")
    if clips < 1 or (batch_size is not None and batch_size < 1):
        raise UserError(f"--clips {clips} / --batch-size {batch_size}: use 1 or more")
    names = [n.strip() for n in text.split(",") if n.strip()] if text else None
    if text is not None and not names:
        raise UserError("--text names nothing; give names separated by commas")
    if text_file:
        names = (names or []) + (class_names_from(text_file) or [])
    paths = video_inputs(inputs) if inputs else []
    if not paths and not names:
        raise UserError("give videos, folders or list files to embed, and/or --text / --text-file names")
    if out.suffix == ".npy" and paths and names:
        raise UserError("--out .npy holds one array; write videos and texts together to a .safetensors file")

    model, cfg, _, _ = load_checkpoint(checkpoint, overrides)
    env = dist.setup(dist.inference_device(cfg, overrides))
    try:
        model.fuse().to(env.device)  # inference only (ila.fuse): same outputs, less work
        result = {"videos": [], "skipped": [], "texts": names or []}
        tensors: dict[str, torch.Tensor] = {}
        if names:
            tensors["text_features"] = embed_text(model, names, env.device)
        if paths:
            key = "frame_features" if per_frame else "video_features"
            tensors[key], result["videos"], result["skipped"] = _embed_all(
                model, cfg, env, paths, per_frame, clips, batch_size or cfg.eval.batch_size)
        if env.main:
            _report_skipped(result["skipped"])
            _write(out, tensors, result, checkpoint, per_frame, clips)
            shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in tensors.items())
            print(f"{len(result['videos'])} video(s), {len(result['texts'])} text(s) -> {out}: {shapes}"
                  + (f"; skipped {len(result['skipped'])} unreadable" if result["skipped"] else ""))
        result["tensors"] = tensors
        return result
    finally:
        dist.cleanup()


def _embed_all(model, cfg, env, paths, per_frame, clips, batch_size):
    """(features in input order, embedded paths, skipped [{path, reason}]), the same on every process."""
    from tqdm import tqdm

    from ila.data.annotations import Sample
    from ila.engine.loaders import video_dataset

    cfg.data.bad_files = "error"            # unreadable files come back as markers, never as other videos
    views = _Views(video_dataset(cfg, [Sample(p, 0) for p in paths], train=False, clips=clips, crops=1))
    sampler = dist.ShardSampler(len(views), env)
    workers = min(cfg.data.workers, max(len(sampler) - 1, 0))
    data = DataLoader(views, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=_collate)
    indices, feats, bad = [], [], []
    bar = tqdm(data, desc="features", unit="batch", disable=not env.main or len(paths) < 2, dynamic_ncols=True,
               leave=False)
    for batch in bar:
        bad += batch["bad"]
        if batch["video"] is not None:
            indices.append(batch["index"])
            feats.append(embed_videos(model, batch["video"].to(env.device), per_frame).cpu())
    bar.close()
    dim = (cfg.model.num_frames, cfg.model.embed_dim) if per_frame else (cfg.model.embed_dim,)
    mine = (torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long),
            torch.cat(feats) if feats else torch.zeros(0, *dim), bad)
    parts = dist.gather(mine, env)
    idx = torch.cat([p[0] for p in parts])
    order = idx.argsort()
    features = torch.cat([p[1] for p in parts])[order].contiguous()
    skipped = sorted((i, reason) for p in parts for i, reason in p[2])
    if idx.numel() + len(skipped) != len(paths) or len(set(idx.tolist())) != idx.numel():
        raise RuntimeError(f"embedded {idx.numel()} and skipped {len(skipped)} of {len(paths)} videos; "
                           f"expected each exactly once")
    if idx.numel() == 0:
        raise UserError(f"none of the {len(paths)} video(s) could be read (first: {skipped[0][1]})")
    return features, [paths[i] for i in idx[order].tolist()], [{"path": paths[i], "reason": r} for i, r in skipped]


def _report_skipped(skipped: list[dict]) -> None:
    if skipped:
        print(f"skipped {len(skipped)} unreadable video(s):", file=sys.stderr)
        for s in skipped:
            print(f"  {s['reason']}", file=sys.stderr)


def _write(out: Path, tensors: dict, result: dict, checkpoint, per_frame: bool, clips: int) -> None:
    info = {"ila_format": FORMAT, "checkpoint": str(checkpoint), "per_frame": per_frame, "clips": clips,
            "videos": result["videos"], "texts": result["texts"], "skipped": result["skipped"]}
    if out.suffix == ".safetensors":
        from safetensors.torch import save_file

        with atomic_path(out) as tmp:
            save_file(tensors, str(tmp), metadata={k: json.dumps(v) for k, v in info.items()})
        return
    (array,) = tensors.values()
    info["array"] = next(iter(tensors))
    info["shape"] = list(array.shape)
    with atomic_path(out) as tmp:
        np.save(tmp, array.numpy())
    write_text(out.with_suffix(".json"), json.dumps(info, indent=2) + "\n")


def read_features(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and the metadata (videos, texts, skipped, ...) of an `ila features` output."""
    path = Path(path)
    if path.suffix == ".npy":
        info = json.loads(path.with_suffix(".json").read_text())
        return {info["array"]: torch.from_numpy(np.load(path, allow_pickle=False))}, info
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
