"""Datasets as folders: one subfolder per class, videos anywhere inside it, no annotation file.

    my_videos/            class names = the subfolder names, sorted
      cooking/ a.mp4  b.mkv  more/c.webm
      dancing/ d.mov  clip_017/ (a frame folder: 00001.jpg ...)

A video is a file with a video extension, or a frame folder (a folder holding JPEG/PNG images directly, which
is not descended into). Hidden files and folders are ignored. Symbolic links are followed: to files always, to
folders once per real folder (known by device and inode), so a link loop, a link back to the top or a second path
to a folder lists nothing twice, and a link to a folder holding the scanned one (its parent, `/`) is not followed
(`find_videos`). `split_holdout` takes a deterministic, class-stratified fraction of such a folder for validation:
a file's place depends only on its own path inside the class folder, so adding videos never moves the others
between the splits. Such a folder is the annotation format `folders` (`ANNOTATION_FORMATS`), which
`read_annotations` and `data.format=auto` choose for a folder.
"""
from __future__ import annotations

import os
import zlib
from collections import deque

from ila.data.annotations import ANNOTATION_FORMATS, VIDEO_EXTENSIONS, Annotations, Sample
from ila.data.decode import IMAGE_EXTENSIONS
from ila.errors import UserError


def find_videos(folder: str) -> list[str]:
    """Every video file and frame folder under `folder` (recursive), in sorted path order. Links to files are
    listed by their own names (a dangling one too: reading it then says the file is missing); a link to a folder
    is followed once per real folder, after the folders reached without links (so a folder reached both ways is
    listed under its real path), and never when the folder holds `folder` (a link to `folder` itself, a parent or
    `/`: everything again, or the whole disk). Each real folder is scanned once, so loops end."""
    try:
        top = _key(folder)
    except OSError:
        return []
    seen = {top} | _holders(folder)        # the folder and every folder holding it: never entered through a link
    found: list[str] = []
    links: deque[str] = deque()            # links to folders met so far, followed after the real folders
    _scan(folder, folder, seen, found, links)
    while links:
        link = links.popleft()
        try:
            key = _key(link)
        except OSError:                    # gone, or a link loop
            continue
        if key not in seen:
            seen.add(key)
            _scan(link, folder, seen, found, links)
    return sorted(found)


def _scan(start: str, top: str, seen: set, found: list, links: deque) -> None:
    """Video files and frame folders under `start` reached without following links into `found`; the links to
    folders met, in sorted order, appended to `links`; each real folder entered added to `seen` (by `_key`)."""
    stack = [start]
    while stack:
        here = stack.pop()
        try:
            with os.scandir(here) as it:
                entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
        except OSError:                    # unreadable (permissions) or gone: skipped, as os.walk does
            continue
        folders, files = [], []
        for e in entries:
            (folders if _is_dir(e) else files).append(e)
        if here != top and any(e.name.lower().endswith(IMAGE_EXTENSIONS) for e in files):
            found.append(here)             # a frame folder: one video, not descended into
            continue
        found += [e.path for e in files if e.name.lower().endswith(VIDEO_EXTENSIONS)]
        inner = []
        for e in folders:
            if _is_link(e):
                links.append(e.path)
                continue
            try:
                key = _key(e.path)
            except OSError:
                continue
            if key not in seen:
                seen.add(key)
                inner.append(e.path)
        stack += reversed(inner)           # depth first, in name order


def _key(path: str) -> tuple[int, int]:
    """The real folder `path` names (links followed), as (device, inode)."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _holders(folder: str) -> set:
    """(device, inode) of every folder holding `folder`'s real path, up to `/`."""
    keys, path = set(), os.path.realpath(folder)
    while True:
        parent = os.path.dirname(path)
        if parent == path:
            return keys
        path = parent
        try:
            keys.add(_key(path))
        except OSError:
            pass


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()              # follows links; False for a dangling link or a link loop
    except OSError:
        return False


def _is_link(entry: os.DirEntry) -> bool:
    try:
        return entry.is_symlink()
    except OSError:
        return False


def read_class_folders(folder: str, class_names: list[str] | None = None) -> Annotations:
    """Samples of a folder with one subfolder per class. With `class_names` (e.g. a checkpoint's), every
    subfolder must be one of them and labels index that list; otherwise the sorted subfolder names are the
    classes."""
    if not os.path.isdir(folder):
        raise UserError(f"dataset folder not found: {folder}")
    around = {_key(folder)} | _holders(folder)      # a class "folder" linking to the dataset or above: not a class
    subdirs = sorted(d for d in os.listdir(folder) if not d.startswith(".") and os.path.isdir(os.path.join(folder, d))
                     and _key(os.path.join(folder, d)) not in around)
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
