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
from safetensors import safe_open
from safetensors.torch import save_file

from ila import jsonsafe
from ila.atomic import atomic_path, write_text
from ila.engine.classes import class_names_from
from ila.engine.predict import video_files
from ila.engine.session import InferenceSession
from ila.errors import UserError

FORMAT = "ila-features/1"
LIST_SUFFIXES = (".txt", ".lst", ".list", ".csv")


def video_inputs(inputs: list[str]) -> list[str]:
    """Video files as given, the video files inside each folder (sorted), and the paths of list files (one per
    line, a trailing integer label ignored; relative to the current folder, else to the list's folder)."""
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


def run_features(checkpoint: str | Path, inputs: list[str], out: str | Path, per_frame: bool = False,
                 clips: int = 1, text: str | None = None, text_file: str | None = None,
                 batch_size: int | None = None, overrides: list[str] | tuple = (),
                 precision: str = "fp32") -> dict:
    """`ila features`: write the embeddings of the videos (and names) to `out`; returns what was written."""
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

    session = InferenceSession(checkpoint, overrides=overrides, distributed=True, need_classes=False,
                               precision=precision)
    try:
        result = {"videos": [], "skipped": [], "texts": names or []}
        tensors: dict[str, torch.Tensor] = {}
        if names:
            tensors["text_features"] = session.text_embeddings(names)
        if paths:
            key = "frame_features" if per_frame else "video_features"
            done = session.embeddings(session.samples(paths), per_frame, clips, batch_size)
            if done.indices.numel() == 0:
                raise UserError(f"none of the {len(paths)} video(s) could be read (first: {done.failed[0][1]}: "
                                f"{done.failed[0][2]})")
            tensors[key] = done.outputs.contiguous()
            result["videos"] = [paths[i] for i in done.indices.tolist()]
            result["skipped"] = [{"path": path, "reason": reason} for _, path, reason in done.failed]
        if session.main:
            _report_skipped(result["skipped"])
            _write(out, tensors, result, checkpoint, per_frame, clips)
            shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in tensors.items())
            print(f"{len(result['videos'])} video(s), {len(result['texts'])} text(s) -> {out}: {shapes}"
                  + (f"; skipped {len(result['skipped'])} unreadable" if result["skipped"] else ""))
        result["tensors"] = tensors
        return result
    finally:
        session.close()


def _report_skipped(skipped: list[dict]) -> None:
    if skipped:
        print(f"skipped {len(skipped)} unreadable video(s):", file=sys.stderr)
        for s in skipped:
            print(f"  {s['path']}: {s['reason']}", file=sys.stderr)


def _write(out: Path, tensors: dict, result: dict, checkpoint, per_frame: bool, clips: int) -> None:
    info = {"ila_format": FORMAT, "checkpoint": str(checkpoint), "per_frame": per_frame, "clips": clips,
            "videos": result["videos"], "texts": result["texts"], "skipped": result["skipped"]}
    if out.suffix == ".safetensors":
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
        where = path.with_suffix(".json")
        info = jsonsafe.loads(where.read_text(encoding="utf-8"), where)
        return {info["array"]: torch.from_numpy(np.load(path, allow_pickle=False))}, info

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, {k: jsonsafe.loads(v, f"{path}: metadata {k!r}")
                                                        for k, v in (f.metadata() or {}).items()}
