"""Annotation files: Kinetics lists and CSV, Something-Something v2 JSON, frame folders, class names.

Every reader turns one file into a list of `Sample`s; labels written as names are mapped to indices
through the class names (from a file, or sorted from the annotation itself). A malformed line raises
`UserError` naming the file, the line and what is wrong.
"""
from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass

from ila.errors import UserError

FORMATS = ("list", "kinetics_csv", "ssv2", "frames")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp")
KINETICS_PATTERN = "{youtube_id}_{time_start:06d}_{time_end:06d}.mp4"
SSV2_PATTERN = "{id}.webm"
_HEADER_WORDS = ("path", "video", "file", "filename", "video_path")


@dataclass
class Sample:
    """One annotated video: its path, class index and (frame folders only) its frame count."""

    path: str
    label: int
    num_frames: int | None = None


@dataclass
class Annotations:
    """What an annotation file holds: the samples and the class names they index."""

    samples: list[Sample]
    class_names: list[str] | None


def load_class_names(path: str) -> list[str]:
    """Class names from a CSV (`id,name`, header optional), a JSON (list, {name: id} or {id: name}) or a
    text file (one name per line); the result is ordered by class id."""
    if not os.path.isfile(path):
        raise UserError(f"class-name file not found: {path}")
    text = _read_text(path)
    if path.lower().endswith(".json"):
        return _class_names_from_json(path, text)
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise UserError(f"{path}: no class names in the file")
    if path.lower().endswith(".csv"):
        return _class_names_from_csv(path, lines)
    return [name for _, name in lines]


def load_annotations(path: str, root: str = "", fmt: str = "auto", class_names=None,
                     filename_pattern: str | None = None) -> list[Sample]:
    """Read an annotation file into samples (see `read_annotations`)."""
    return read_annotations(path, root, fmt, class_names, filename_pattern).samples


def read_annotations(path: str, root: str = "", fmt: str = "auto", class_names=None,
                     filename_pattern: str | None = None) -> Annotations:
    """Read an annotation file; also return the class names its labels index.

    fmt: "list" (`path LABEL`, space or comma separated), "kinetics_csv" (`label,youtube_id,time_start,
    time_end,split`), "ssv2" (SSv2 train/validation JSON), "frames" (`dir NUM_FRAMES LABEL`) or "auto"
    (by extension and content). class_names: a list, a class-name file path, or None (names come from the
    annotation: sorted unique label names; for SSv2 the `labels.json` next to the list). filename_pattern:
    the video file name of a CSV row or SSv2 entry, formatted with the row's fields. root is joined to
    every path.
    """
    if not os.path.isfile(path):
        raise UserError(f"annotation file not found: {path}")
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt not in FORMATS:
        raise UserError(f"unknown annotation format {fmt!r} for {path}; expected one of {', '.join(FORMATS)}")
    if isinstance(class_names, (str, os.PathLike)):
        class_names = load_class_names(os.fspath(class_names))
    elif class_names is not None:
        class_names = list(class_names)
    if fmt == "ssv2":
        if class_names is None:
            class_names = _ssv2_labels_next_to(path)
        rows = _read_ssv2(path, filename_pattern or SSV2_PATTERN)
    elif fmt == "kinetics_csv":
        rows = _read_kinetics_csv(path, filename_pattern or KINETICS_PATTERN)
    else:
        rows = _read_lines(path, frames=(fmt == "frames"))
    if not rows:
        raise UserError(f"{path}: no samples in the annotation file")
    class_names = _resolve_class_names(path, rows, class_names)
    lookup = {name: i for i, name in enumerate(class_names or [])}
    samples = [Sample(os.path.join(root, rel) if root else rel,
                      _label_index(path, line, label, class_names, lookup), num)
               for line, rel, label, num in rows]
    return Annotations(samples, class_names)


def detect_format(path: str) -> str:
    """Guess the format: `.json` -> ssv2; a CSV header naming `youtube_id` -> kinetics_csv; three fields
    with a frame count and no video extension -> frames; otherwise list."""
    if path.lower().endswith(".json"):
        return "ssv2"
    first = next((line.strip() for line in _read_text(path).splitlines() if line.strip()), "")
    if "youtube_id" in first.split(","):
        return "kinetics_csv"
    fields = first.split()
    if len(fields) == 3 and fields[1].isdigit() and not fields[0].lower().endswith(VIDEO_EXTENSIONS):
        return "frames"
    return "list"


# ----------------------------------------------------------------------------------------------------
# readers: each returns rows (line number, relative path, label as written, frame count or None)

def _read_lines(path: str, frames: bool) -> list[tuple]:
    rows = []
    for n, raw in enumerate(_read_text(path).splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if frames:
            fields = line.split(",") if "," in line else line.split(None, 2)
            fields = [f.strip() for f in fields]
            if len(fields) != 3 or not fields[0]:
                raise UserError(f"{path}:{n}: expected 'DIR NUM_FRAMES LABEL', got {line!r}")
            if not fields[1].isdigit() or int(fields[1]) < 1:
                raise UserError(f"{path}:{n}: frame count {fields[1]!r} is not a positive integer")
            rows.append((n, fields[0], fields[2], int(fields[1])))
        else:
            rel, label = _split_list_line(line)
            if not rows and rel.lower() in _HEADER_WORDS:
                continue                               # a header row such as "path,label"
            if not rel or not label:
                raise UserError(f"{path}:{n}: expected 'PATH LABEL' (space or comma separated), got {line!r}")
            rows.append((n, rel, label, None))
    return rows


def _split_list_line(line: str) -> tuple[str, str]:
    """`path label`: the path ends at a video extension when there is one (so paths or label names may
    hold spaces), else at the first comma or whitespace."""
    m = re.match(r"^(.+?\.(?:%s))[\s,]+(.+)$" % "|".join(e[1:] for e in VIDEO_EXTENSIONS), line, re.IGNORECASE)
    if m:
        return m.group(1).strip(), m.group(2).strip()
    parts = line.split(",", 1) if "," in line else line.split(None, 1)
    if len(parts) != 2:
        return line, ""
    return parts[0].strip(), parts[1].strip()


def _read_kinetics_csv(path: str, pattern: str) -> list[tuple]:
    text = _read_text(path)
    reader = csv.reader(text.splitlines())
    header = [h.strip() for h in next(reader, [])]
    missing = [k for k in ("label", "youtube_id", "time_start", "time_end") if k not in header]
    if missing:
        raise UserError(f"{path}:1: Kinetics CSV header lacks {', '.join(missing)} (got {','.join(header)})")
    rows = []
    for n, fields in enumerate(reader, 2):
        if not any(f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            raise UserError(f"{path}:{n}: expected {len(header)} comma-separated fields, got {len(fields)}")
        row = {k: v.strip() for k, v in zip(header, fields)}
        for k in ("time_start", "time_end"):
            try:
                row[k] = int(float(row[k]))
            except ValueError:
                raise UserError(f"{path}:{n}: {k} {row[k]!r} is not a number") from None
        if not row["label"]:
            raise UserError(f"{path}:{n}: empty label")
        try:
            rel = pattern.format(**row)
        except (KeyError, ValueError, IndexError) as e:
            raise UserError(f"{path}:{n}: file-name pattern {pattern!r} does not fit this row ({e})") from None
        rows.append((n, rel, row["label"], None))
    return rows


def _read_ssv2(path: str, pattern: str) -> list[tuple]:
    data = _load_json(path)
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of videos (SSv2 train/validation file)")
    rows = []
    for n, entry in enumerate(data, 1):
        if not isinstance(entry, dict) or "id" not in entry:
            raise UserError(f"{path}: entry {n}: expected an object with 'id' and 'template'")
        if "template" not in entry:
            raise UserError(f"{path}: entry {n} (id {entry['id']}): no 'template' (test lists carry no labels)")
        template = entry["template"].replace("[", "").replace("]", "")
        try:
            rel = pattern.format(**entry)
        except (KeyError, ValueError, IndexError) as e:
            raise UserError(f"{path}: entry {n}: file-name pattern {pattern!r} does not fit ({e})") from None
        rows.append((f"entry {n}", rel, template, None))
    return rows


# ----------------------------------------------------------------------------------------------------
# labels and class names

def _resolve_class_names(path: str, rows: list[tuple], class_names: list[str] | None) -> list[str] | None:
    if class_names is not None:
        return class_names
    labels = [label for _, _, label, _ in rows]
    if all(_is_int(label) for label in labels):
        return None
    return sorted(set(labels))


def _label_index(path: str, line, label: str, class_names: list[str] | None, lookup: dict[str, int]) -> int:
    where = f"{path}:{line}" if isinstance(line, int) else f"{path}: {line}"
    if _is_int(label):
        index = int(label)
        if index < 0 or (class_names is not None and index >= len(class_names)):
            limit = f" (0..{len(class_names) - 1})" if class_names is not None else ""
            raise UserError(f"{where}: label {index} is out of range{limit}")
        return index
    if label not in lookup:
        raise UserError(f"{where}: label {label!r} is not a known class name")
    return lookup[label]


def _ssv2_labels_next_to(path: str) -> list[str]:
    candidate = os.path.join(os.path.dirname(path), "labels.json")
    if not os.path.isfile(candidate):
        raise UserError(f"{path}: SSv2 needs its labels JSON: pass class_names or put labels.json next to it")
    return load_class_names(candidate)


def _class_names_from_json(path: str, text: str) -> list[str]:
    data = _load_json(path, text)
    if isinstance(data, list) and all(isinstance(x, str) for x in data):
        return list(data)
    if isinstance(data, dict) and data:
        keys, values = list(data), list(data.values())
        if all(_is_int(v) for v in values):            # {name: id}, as SSv2's labels.json
            pairs = [(int(v), k) for k, v in data.items()]
        elif all(_is_int(k) for k in keys):            # {id: name}
            pairs = [(int(k), str(v)) for k, v in data.items()]
        else:
            raise UserError(f"{path}: expected a JSON list of names, {{name: id}} or {{id: name}}")
        return _dense(path, pairs)
    raise UserError(f"{path}: expected a JSON list of names, {{name: id}} or {{id: name}}")


def _class_names_from_csv(path: str, lines: list[tuple[int, str]]) -> list[str]:
    pairs = []
    for i, (n, line) in enumerate(lines):
        fields = next(csv.reader([line]))
        if len(fields) < 2:
            raise UserError(f"{path}:{n}: expected 'id,name', got {line!r}")
        if i == 0 and not _is_int(fields[0]):
            continue                                   # header row such as "id,name"
        if not _is_int(fields[0]):
            raise UserError(f"{path}:{n}: class id {fields[0]!r} is not an integer")
        pairs.append((int(fields[0]), ",".join(fields[1:]).strip()))
    return _dense(path, pairs)


def _dense(path: str, pairs: list[tuple[int, str]]) -> list[str]:
    pairs.sort()
    ids = [i for i, _ in pairs]
    if ids != list(range(len(ids))):
        raise UserError(f"{path}: class ids must be 0..{len(ids) - 1} without gaps or repeats")
    return [name for _, name in pairs]


def _is_int(value) -> bool:
    if isinstance(value, int):
        return True
    return isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()) is not None


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8-sig") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None


def _load_json(path: str, text: str | None = None):
    try:
        return json.loads(_read_text(path) if text is None else text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
