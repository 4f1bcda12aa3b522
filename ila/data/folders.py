"""Datasets as folders: one subfolder per class, videos anywhere inside it, no annotation file.

    my_videos/            class names = the subfolder names, sorted
      cooking/ a.mp4  b.mkv  more/c.webm
      dancing/ d.mov  clip_017/ (a frame folder: 00001.jpg ...)

A video is a file with a video extension, or a frame folder (a folder holding JPEG/PNG images directly, which
is not descended into). Hidden files and folders are ignored. `split_holdout` takes a deterministic,
class-stratified fraction of such a folder for validation: a file's place depends only on its own path inside
the class folder, so adding videos never moves the others between the splits. Such a folder is the annotation
format `folders` (`ANNOTATION_FORMATS`), which `read_annotations` and `data.format=auto` choose for a folder.
"""
from __future__ import annotations

import os
import zlib

from ila.data.annotations import ANNOTATION_FORMATS, VIDEO_EXTENSIONS, Annotations, Sample
from ila.data.decode import IMAGE_EXTENSIONS
from ila.errors import UserError


def find_videos(folder: str) -> list[str]:
    """Every video file and frame folder under `folder` (recursive), in sorted path order."""
    found = []
    for here, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files = [f for f in files if not f.startswith(".")]
        if here != folder and any(f.lower().endswith(IMAGE_EXTENSIONS) for f in files):
            found.append(here)                          # a frame folder: one video
            dirs[:] = []
            continue
        found += [os.path.join(here, f) for f in sorted(files) if f.lower().endswith(VIDEO_EXTENSIONS)]
    return sorted(found)


def read_class_folders(folder: str, class_names: list[str] | None = None) -> Annotations:
    """Samples of a folder with one subfolder per class. With `class_names` (e.g. a checkpoint's), every
    subfolder must be one of them and labels index that list; otherwise the sorted subfolder names are the
    classes."""
    if not os.path.isdir(folder):
        raise UserError(f"dataset folder not found: {folder}")
    subdirs = sorted(d for d in os.listdir(folder) if not d.startswith(".") and os.path.isdir(os.path.join(folder, d)))
    if not subdirs:
        raise UserError(f"{folder} has no class subfolders; a folder dataset holds one subfolder per class "
                        f"(e.g. {folder}/cooking/a.mp4), or give an annotation file instead")
    names = list(class_names) if class_names else subdirs
    lookup = {name: i for i, name in enumerate(names)}
    samples, empty = [], []
    for sub in subdirs:
        videos = find_videos(os.path.join(folder, sub))
        if not videos:
            empty.append(sub)
            continue
        if sub not in lookup:
            raise UserError(f"{folder}/{sub}: class {sub!r} is not one of the model's {len(names)} classes "
                            f"({', '.join(names[:8])}{', ...' if len(names) > 8 else ''})")
        samples += [Sample(v, lookup[sub]) for v in videos]
    if not samples:
        raise UserError(f"{folder}: no videos in its class subfolders ({', '.join(e.lstrip('.') for e in VIDEO_EXTENSIONS[:5])}"
                        f" files or frame folders)")
    return Annotations(samples, names)


@ANNOTATION_FORMATS.register("folders", description="a folder with one subfolder per class (no annotation file)",
                             folder=True, fallback=True)
def read_folders(path: str, root: str = "", class_names=None, filename_pattern=None, allow_duplicates=False):
    """The `folders` format (`read_class_folders`): the paths are the files found, so `root` is not joined."""
    return read_class_folders(path, class_names)


def split_holdout(samples: list[Sample], fraction: float, folder: str) -> tuple[list[Sample], list[Sample]]:
    """(train, val): round(fraction x n) videos of each class held out, at least one per class of two or
    more videos, chosen by a hash of each video's path relative to `folder` (deterministic, stable)."""
    if not 0 < fraction < 1:
        raise UserError(f"data.val_split={fraction} is not allowed; use a fraction between 0 and 1 (e.g. 0.2)")
    by_class: dict[int, list[Sample]] = {}
    for s in samples:
        by_class.setdefault(s.label, []).append(s)
    held: set[str] = set()
    for members in by_class.values():
        count = min(max(round(fraction * len(members)), 1), len(members) - 1) if len(members) > 1 else 0
        ranked = sorted(members, key=lambda s: (zlib.crc32(os.path.relpath(s.path, folder).encode()), s.path))
        held.update(s.path for s in ranked[:count])
    train = [s for s in samples if s.path not in held]
    val = [s for s in samples if s.path in held]
    if not val:
        raise UserError(f"data.val_split={fraction}: {folder} has no class with two or more videos to hold out")
    return train, val
