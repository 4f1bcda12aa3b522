"""Annotation files: Kinetics lists and CSV, Something-Something v2 JSON, frame folders, class names.

Every reader turns one file into a list of `Sample`s; labels written as names are mapped to indices
through the class names (from a file, or sorted from the annotation itself). A malformed line raises
`UserError` naming the file, the line and what is wrong.

The formats are the entries of `ANNOTATION_FORMATS` (`data.format`, `ila prepare --format`), each registered
once by the function that reads it; `ila.data.folders` registers `folders` (one subfolder per class). A reader
is called as `reader(path, root=..., class_names=..., filename_pattern=..., allow_duplicates=...)` (class_names:
None or a checked list of names) and returns `Annotations`. Its entry may say `folder=True` (it reads a
folder, not a file) and `detect=fn(path, head)` (`head()`: the file's first non-empty line) for `auto`;
`fallback=True` marks the format `auto` takes when no other one recognises a file.
"""
from __future__ import annotations

import csv
import difflib
import io
import math
import os
import re
import reprlib
from dataclasses import dataclass
from functools import cache

from ila import jsonsafe
from ila.errors import UserError
from ila.registry import Entry, Registry

# data.format's values (besides "auto"); `folders` is registered by ila.data.folders, loaded on the first look-up
ANNOTATION_FORMATS = Registry("annotation format", key="data.format", builtin=("ila.data.folders",))
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp")
KINETICS_PATTERN = "{youtube_id}_{time_start:06d}_{time_end:06d}.mp4"
SSV2_PATTERN = "{id}.webm"
MAX_CLASSES = 100_000                       # integer labels with no class list may not imply more classes
_MAX_TEXT_BYTES = 2 * 2**30                 # annotation files are read whole; the largest public ones are ~100 MB
_HEADER_WORDS = ("path", "video", "file", "filename", "video_path")
_DIGITS = re.compile(r"[0-9]+")
_LIST_LINE = re.compile(r"^(.+?\.(?:%s))[\s,]+(.+)$" % "|".join(e[1:] for e in VIDEO_EXTENSIONS), re.IGNORECASE)
_REPR = reprlib.Repr()                      # bounded repr of values in error lines
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict = 2, 4, 4
_INTEGER = re.compile(r"[+-]?[0-9]+")
# control characters but tab (escape codes, line breaks, NUL) and lone surrogates (JSON "\ud800": no file
# system or UTF-8 file can hold them)
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\ud800-\udfff]")


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
    lines = [(n, line.strip()) for n, line in enumerate(_lines(text), 1) if line.strip()]
    if not lines:
        raise UserError(f"{path}: no class names in the file")
    if path.lower().endswith(".csv"):
        return _class_names_from_csv(path, lines)
    return _unique_names(path, [name for _, name in lines], [f"line {n}" for n, _ in lines])


def load_annotations(path: str, root: str = "", fmt: str = "auto", class_names=None,
                     filename_pattern: str | None = None, allow_duplicates: bool = False) -> list[Sample]:
    """Read an annotation file into samples (see `read_annotations`)."""
    return read_annotations(path, root, fmt, class_names, filename_pattern, allow_duplicates).samples


def read_annotations(path: str, root: str = "", fmt: str = "auto", class_names=None,
                     filename_pattern: str | None = None, allow_duplicates: bool = False) -> Annotations:
    """Read an annotation file, or a dataset folder; also return the class names its labels index.

    fmt: a registered format (`ANNOTATION_FORMATS`): "list" (`path LABEL`, space or comma separated),
    "kinetics_csv" (`label,youtube_id,time_start,time_end,split`), "ssv2" (SSv2 train/validation JSON), "frames"
    (`dir NUM_FRAMES LABEL`), "folders" (a folder with one subfolder per class), or "auto" (a folder: folders;
    a file: by extension and content). class_names: a list, a class-name file path, or None (names come from
    the annotation: sorted unique label names; for SSv2 the `labels.json` next to the list; for folders the
    sorted subfolder names). filename_pattern: the video file name of a CSV row or SSv2 entry, formatted with
    the row's fields. root is joined to every path of a file. A video listed twice is refused (it would be
    trained on or scored twice) unless allow_duplicates (deliberate oversampling).
    """
    entry = annotation_format(path, fmt)
    if isinstance(class_names, (str, os.PathLike)):
        class_names = load_class_names(os.fspath(class_names))
    elif class_names is not None:
        class_names = _unique_names("class names", [str(name) for name in class_names])
    return entry.obj(path, root=root, class_names=class_names, filename_pattern=filename_pattern,
                     allow_duplicates=allow_duplicates)


def annotation_format(path: str, fmt: str = "auto") -> Entry:
    """The registered format that reads `path`: `fmt`, or for "auto" the one `detect_format` finds; a one-line
    UserError when `fmt` is not registered or `path` is not what the format reads (a file or a folder)."""
    if fmt != "auto" and fmt not in ANNOTATION_FORMATS:
        raise UserError(f"unknown annotation format {_short(fmt)} for {path}; use one of "
                        f"{', '.join(format_choices())}")
    entry = ANNOTATION_FORMATS.get(detect_format(path) if fmt == "auto" else fmt)
    if entry.info.get("folder"):
        if not os.path.isdir(path):
            raise UserError(f"{path} is a file; annotation format {entry.name!r} reads a folder" if os.path.exists(path)
                            else f"dataset folder not found: {path}")
    elif not os.path.isfile(path):
        raise UserError(f"{path} is a folder; annotation format {entry.name!r} reads an annotation file (format auto "
                        f"reads a folder with one subfolder per class)" if os.path.isdir(path)
                        else f"annotation file not found: {path}")
    return entry


def format_choices() -> tuple[str, ...]:
    """What `data.format` and `ila prepare --format` accept: "auto" and every registered format."""
    return ("auto",) + ANNOTATION_FORMATS.names()


def detect_format(path: str) -> str:
    """Guess the format: a folder -> the folder format (folders); a file -> the first registered file format
    whose `detect` recognises it (`.json` -> ssv2; a CSV header naming `youtube_id` -> kinetics_csv; three
    fields with a frame count and no video extension -> frames), otherwise the fallback (list)."""
    folder = os.path.isdir(path)
    if not folder and not os.path.isfile(path):
        raise UserError(f"annotation file not found: {path}")
    head = cache(lambda: next((line.strip() for line in _lines(_read_text(path)) if line.strip()), ""))
    kind = [e for e in ANNOTATION_FORMATS if bool(e.info.get("folder")) == folder]
    found = next((e.name for e in kind if e.info.get("detect") and e.info["detect"](path, head)), None)
    found = found or next((e.name for e in kind if e.info.get("fallback")), None)
    if found is None:
        raise UserError(f"{path}: no registered annotation format reads a {'folder' if folder else 'file'} like it; "
                        f"give the format (one of {', '.join(ANNOTATION_FORMATS.names())})")
    return found


def annotations_from_rows(path: str, rows: list[tuple], root: str = "", class_names: list[str] | None = None,
                          allow_duplicates: bool = False) -> Annotations:
    """Samples from a reader's rows (line, relative path, label as written, frame count or None): paths and
    labels checked, duplicates refused (unless allow_duplicates), labels mapped to class indices."""
    if not rows:
        raise UserError(f"{path}: no samples in the annotation file")
    for line, rel, label, _ in rows:
        for what, text in (("path", rel), ("label", label)):
            if _CONTROL.search(text):
                at = f"{path}:{line}" if isinstance(line, int) else f"{path}: {line}"
                raise UserError(f"{at}: the {what} {_short(text)} holds {_bad_char(text)}; remove it")
    if not allow_duplicates:
        _refuse_duplicates(path, rows)
    class_names = _resolve_class_names(path, rows, class_names)
    lookup = {name: i for i, name in enumerate(class_names or [])}
    samples = [Sample(os.path.join(root, rel) if root else rel,
                      _label_index(path, line, label, class_names, lookup), num)
               for line, rel, label, num in rows]
    return Annotations(samples, class_names)


# ----------------------------------------------------------------------------------------------------
# the registered file formats

def _is_json(path: str) -> bool:
    return path.lower().endswith(".json")


def _looks_like_frames(path: str, head) -> bool:
    fields = head().split()
    return (not _is_json(path) and len(fields) == 3 and _DIGITS.fullmatch(fields[1]) is not None
            and not fields[0].lower().endswith(VIDEO_EXTENSIONS))


@ANNOTATION_FORMATS.register("list", description="`PATH LABEL` lines (space or comma separated)", fallback=True)
def read_list(path: str, root: str = "", class_names=None, filename_pattern=None, allow_duplicates=False):
    return annotations_from_rows(path, _read_lines(path, frames=False), root, class_names, allow_duplicates)


@ANNOTATION_FORMATS.register(
    "kinetics_csv", description="Kinetics CSV (label,youtube_id,time_start,time_end,split)",
    detect=lambda path, head: not _is_json(path) and "youtube_id" in [f.strip() for f in head().split(",")])
def read_kinetics_csv(path: str, root: str = "", class_names=None, filename_pattern=None, allow_duplicates=False):
    rows = _read_kinetics_csv(path, filename_pattern or KINETICS_PATTERN)
    return annotations_from_rows(path, rows, root, class_names, allow_duplicates)


@ANNOTATION_FORMATS.register("ssv2", description="Something-Something v2 train/validation JSON",
                             detect=lambda path, head: _is_json(path))
def read_ssv2(path: str, root: str = "", class_names=None, filename_pattern=None, allow_duplicates=False):
    if class_names is None:
        class_names = _ssv2_labels_next_to(path)
    rows = _read_ssv2(path, filename_pattern or SSV2_PATTERN)
    return annotations_from_rows(path, rows, root, class_names, allow_duplicates)


@ANNOTATION_FORMATS.register("frames", description="frame folders: `DIR NUM_FRAMES LABEL` lines",
                             detect=_looks_like_frames)
def read_frames(path: str, root: str = "", class_names=None, filename_pattern=None, allow_duplicates=False):
    return annotations_from_rows(path, _read_lines(path, frames=True), root, class_names, allow_duplicates)


# ----------------------------------------------------------------------------------------------------
# readers: each returns rows (line number, relative path, label as written, frame count or None)

def _read_lines(path: str, frames: bool) -> list[tuple]:
    rows = []
    for n, raw in enumerate(_lines(_read_text(path)), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if frames:
            fields = line.split(",") if "," in line else line.split(None, 2)
            fields = [f.strip() for f in fields]
            if len(fields) != 3 or not fields[0]:
                raise UserError(f"{path}:{n}: expected 'DIR NUM_FRAMES LABEL', got {_short(line)}")
            if not _DIGITS.fullmatch(fields[1]) or len(fields[1]) > 18 or int(fields[1]) < 1:
                raise UserError(f"{path}:{n}: frame count {_short(fields[1])} is not a positive integer")
            rows.append((n, fields[0], fields[2], int(fields[1])))
        else:
            rel, label = _split_list_line(line)
            if not rows and rel.lower() in _HEADER_WORDS:
                continue                               # a header row such as "path,label"
            if not rel or not label:
                raise UserError(f"{path}:{n}: expected 'PATH LABEL' (space or comma separated), got {_short(line)}")
            rows.append((n, rel, label, None))
    return rows


def _split_list_line(line: str) -> tuple[str, str]:
    """`path label`: the path ends at a video extension when there is one (so paths or label names may
    hold spaces), else at the first comma or whitespace."""
    m = _LIST_LINE.match(line)
    if m:
        return m.group(1).strip(), m.group(2).strip()
    parts = line.split(",", 1) if "," in line else line.split(None, 1)
    if len(parts) != 2:
        return line, ""
    return parts[0].strip(), parts[1].strip()


def _read_kinetics_csv(path: str, pattern: str) -> list[tuple]:
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))  # a quoted field keeps its line breaks
    try:
        header = [h.strip() for h in next((r for r in reader if any(f.strip() for f in r)), [])]
        header_line = reader.line_num
        missing = [k for k in ("label", "youtube_id", "time_start", "time_end") if k not in header]
        if missing:
            raise UserError(f"{path}:{header_line}: Kinetics CSV header lacks {', '.join(missing)} "
                            f"(got {_short(','.join(header))}); the header is "
                            f"label,youtube_id,time_start,time_end,split")
        twice = sorted({h for h in header if header.count(h) > 1})
        if twice:
            raise UserError(f"{path}:{header_line}: column {_short(twice[0])} appears twice in the header; keep one")
        rows, end = [], reader.line_num
        for fields in reader:
            n, end = end + 1, reader.line_num                 # the line the row starts on
            if not any(f.strip() for f in fields):
                continue
            if len(fields) != len(header):
                raise UserError(f"{path}:{n}: expected {len(header)} comma-separated fields, got {len(fields)}")
            row = {k: v.strip() for k, v in zip(header, fields)}
            for k in ("time_start", "time_end"):
                row[k] = _seconds(path, n, k, row[k])
            if row["time_end"] < row["time_start"]:
                raise UserError(f"{path}:{n}: time_end {row['time_end']} is before time_start {row['time_start']}")
            if not row["label"]:
                raise UserError(f"{path}:{n}: empty label")
            if not row["youtube_id"]:
                raise UserError(f"{path}:{n}: empty youtube_id")
            rows.append((n, _format_name(pattern, row, f"{path}:{n}"), row["label"], None))
    except csv.Error as e:
        raise UserError(f"{path}:{reader.line_num}: not a readable CSV line ({e})") from None
    return rows


def _seconds(path: str, n: int, key: str, value: str) -> int:
    """A Kinetics clip bound: a whole number of seconds >= 0 ("417" or "417.0")."""
    try:
        number = float(value)
    except ValueError:
        raise UserError(f"{path}:{n}: {key} {_short(value)} is not a number") from None
    if not (math.isfinite(number) and number.is_integer() and 0 <= number < 10**9):
        raise UserError(f"{path}:{n}: {key} {_short(value)} is not a whole number of seconds >= 0")
    return int(number)


def _format_name(pattern: str, fields: dict, where: str) -> str:
    """The video file name of a row: `pattern` formatted with the row's fields."""
    try:
        name = pattern.format(**fields)
    except (KeyError, ValueError, IndexError, AttributeError, TypeError) as e:
        raise UserError(f"{where}: file-name pattern {pattern!r} does not fit this row "
                        f"({type(e).__name__}: {e})") from None
    if not name.strip():
        raise UserError(f"{where}: file-name pattern {pattern!r} gives an empty file name for this row")
    if "\0" in name:
        raise UserError(f"{where}: the file name {_short(name)} holds a NUL character, which no path can hold")
    return name


def _read_ssv2(path: str, pattern: str) -> list[tuple]:
    data = _load_json(path)
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of videos (SSv2 train/validation file), got a JSON "
                        f"{_json_type(data)}")
    rows = []
    for n, entry in enumerate(data, 1):
        if not isinstance(entry, dict) or "id" not in entry:
            raise UserError(f"{path}: entry {n}: expected an object with 'id' and 'template', got "
                            f"{'an object without id' if isinstance(entry, dict) else 'a JSON ' + _json_type(entry)}")
        video_id = entry["id"]
        if isinstance(video_id, bool) or not isinstance(video_id, (str, int)) or not str(video_id).strip():
            raise UserError(f"{path}: entry {n}: 'id' must be a non-empty string or integer, got "
                            f"{_json_type(video_id)} {_short(video_id)}")
        shown_id = str(video_id) if len(str(video_id)) <= 40 else str(video_id)[:37] + "..."
        if "template" not in entry:
            raise UserError(f"{path}: entry {n} (id {shown_id}): no 'template' (test lists carry no labels)")
        for key in ("template", "label"):
            if key in entry and not isinstance(entry[key], str):
                raise UserError(f"{path}: entry {n} (id {shown_id}): {key!r} must be a string, got "
                                f"{_json_type(entry[key])} {_short(entry[key])}")
        template = entry["template"].replace("[", "").replace("]", "").strip()
        if not template:
            raise UserError(f"{path}: entry {n} (id {shown_id}): empty 'template'")
        rows.append((f"entry {n}", _format_name(pattern, entry, f"{path}: entry {n}"), template, None))
    return rows


def _json_type(value) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)


def _bad_char(text: str) -> str:
    char = _CONTROL.search(text).group()
    return f"a lone surrogate ({char!r})" if "\ud800" <= char <= "\udfff" else f"a control character ({char!r})"


def _short(value) -> str:
    """A value for an error line: its repr, cut short (reprlib bounds the work on huge or nested values)."""
    text = _REPR.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ----------------------------------------------------------------------------------------------------
# labels and class names

def _refuse_duplicates(path: str, rows: list[tuple]) -> None:
    """A video listed twice would be trained on or scored twice: name the repeated lines and the count."""
    first_seen, repeats = {}, []
    for line, rel, _, _ in rows:
        key = os.path.normpath(rel)                    # a/./x.mp4 is a/x.mp4
        if key in first_seen:
            repeats.append((line, first_seen[key], rel))
        else:
            first_seen[key] = line
    if repeats:
        at = lambda line: f"line {line}" if isinstance(line, int) else str(line)  # noqa: E731
        shown = "; ".join(f"{at(line)} repeats {at(first)} ({_short(rel)})" for line, first, rel in repeats[:3])
        more = f"; and {len(repeats) - 3} more" if len(repeats) > 3 else ""
        raise UserError(f"{path}: {len(repeats)} duplicated video{'s' if len(repeats) > 1 else ''} would be "
                        f"counted twice: {shown}{more}; remove the repeated lines")


def _resolve_class_names(path: str, rows: list[tuple], class_names: list[str] | None) -> list[str] | None:
    if class_names is not None:
        return class_names
    ints = [(line, label) for line, _, label, _ in rows if _is_int(label)]
    if len(ints) == len(rows):
        return None
    if ints:                                           # "3" and "cat" in one file: indices or names?
        name = next((line, label) for line, _, label, _ in rows if not _is_int(label))
        where = lambda line: f"line {line}" if isinstance(line, int) else str(line)  # noqa: E731
        raise UserError(f"{path}: mixes class indices ({where(ints[0][0])}: {_short(ints[0][1])}) with class names "
                        f"({where(name[0])}: {_short(name[1])}); write every label the same way, or pass the "
                        f"class names")
    return sorted({label for _, _, label, _ in rows})


def _label_index(path: str, line, label: str, class_names: list[str] | None, lookup: dict[str, int]) -> int:
    where = f"{path}:{line}" if isinstance(line, int) else f"{path}: {line}"
    if _is_int(label):
        if len(label.strip().lstrip("+-")) > 18:
            raise UserError(f"{where}: label {_short(label)} is out of range")
        index = int(label)
        if index < 0 or (class_names is not None and index >= len(class_names)):
            limit = f" (0..{len(class_names) - 1})" if class_names is not None else " (labels start at 0)"
            raise UserError(f"{where}: label {index} is out of range{limit}")
        if class_names is None and index >= MAX_CLASSES:
            raise UserError(f"{where}: label {index} would mean {index + 1} classes; pass the class names "
                            f"(data.class_names) or number the classes from 0")
        return index
    if label not in lookup:
        close = difflib.get_close_matches(label, list(lookup), n=1, cutoff=0.75)
        known = f"{len(lookup)} class{'es' if len(lookup) != 1 else ''} known"
        hint = f" (did you mean {_short(close[0])}?)" if close else f" ({known})"
        raise UserError(f"{where}: label {_short(label)} is not a known class name{hint}")
    return lookup[label]


def _ssv2_labels_next_to(path: str) -> list[str]:
    candidate = os.path.join(os.path.dirname(path), "labels.json")
    if not os.path.isfile(candidate):
        raise UserError(f"{path}: SSv2 needs its labels JSON: pass class_names or put labels.json next to it")
    return load_class_names(candidate)


def _class_names_from_json(path: str, text: str) -> list[str]:
    data = _load_json(path, text)
    expected = f"{path}: expected a JSON list of names, {{name: id}} or {{id: name}}"
    if isinstance(data, list) and data:
        bad = next((i for i, x in enumerate(data) if not isinstance(x, str)), None)
        if bad is not None:
            raise UserError(f"{expected}; item {bad} is a {_json_type(data[bad])} {_short(data[bad])}")
        return _unique_names(path, [x.strip() for x in data], [f"item {i}" for i in range(len(data))])
    if isinstance(data, dict) and data:
        keys, values = list(data), list(data.values())
        if all(_is_int(v) for v in values):            # {name: id}, as SSv2's labels.json
            pairs = [(_id(path, v), k) for k, v in data.items()]
        elif all(_is_int(k) for k in keys):            # {id: name}
            bad = next((k for k, v in data.items() if not isinstance(v, str)), None)
            if bad is not None:
                raise UserError(f"{expected}; the name of id {bad} is a {_json_type(data[bad])} {_short(data[bad])}")
            pairs = [(_id(path, k), v) for k, v in data.items()]
        else:
            raise UserError(f"{expected}; some keys and some values are not integers")
        names = _dense(path, [(i, name.strip()) for i, name in pairs])
        return _unique_names(path, names, [f"id {i}" for i in range(len(names))])
    raise UserError(f"{expected}, got {'an empty ' if not data and isinstance(data, (list, dict)) else 'a '}"
                    f"JSON {_json_type(data)}")


def _class_names_from_csv(path: str, lines: list[tuple[int, str]]) -> list[str]:
    pairs, where = [], {}
    for i, (n, line) in enumerate(lines):
        try:
            fields = next(csv.reader([line]))
        except csv.Error as e:
            raise UserError(f"{path}:{n}: not a readable CSV line ({e})") from None
        if len(fields) < 2:
            raise UserError(f"{path}:{n}: expected 'id,name', got {_short(line)}")
        if i == 0 and not _is_int(fields[0]):
            continue                                   # header row such as "id,name"
        if not _is_int(fields[0]):
            raise UserError(f"{path}:{n}: class id {_short(fields[0])} is not an integer")
        pairs.append((_id(f"{path}:{n}", fields[0]), ",".join(fields[1:]).strip()))
        where.setdefault(pairs[-1][0], f"line {n}")
    names = _dense(path, pairs)
    return _unique_names(path, names, [where[i] for i in range(len(names))])


def _dense(path: str, pairs: list[tuple[int, str]]) -> list[str]:
    if not pairs:
        raise UserError(f"{path}: no class names in the file")
    ids = sorted(i for i, _ in pairs)
    expected = list(range(len(ids)))
    if ids != expected:
        wrong = next(i for i, want in zip(ids, expected) if i != want)
        what = (f"id {wrong} appears twice" if ids.count(wrong) > 1 else
                f"id {wrong} is negative" if wrong < 0 else f"id {min(set(expected) - set(ids))} is missing")
        raise UserError(f"{path}: class ids must be 0..{len(ids) - 1} without gaps or repeats ({what})")
    return [name for _, name in sorted(pairs)]


def _unique_names(path: str, names: list[str], where: list[str] | None = None) -> list[str]:
    """Class names must be non-empty and distinct: a repeated name makes its label ambiguous. where[i] says
    where name i was written ("line 3", "item 2")."""
    where = where or [f"class {i}" for i in range(len(names))]
    at = lambda i: f"{path}:{where[i][5:]}" if where[i].startswith("line ") else f"{path}: {where[i]}"  # noqa: E731
    seen = {}
    for i, name in enumerate(names):
        if not name.strip():
            raise UserError(f"{at(i)}: empty class name")
        if _CONTROL.search(name):
            raise UserError(f"{at(i)}: class name {_short(name)} holds {_bad_char(name)}; remove it")
        if name in seen:
            raise UserError(f"{at(i)}: class name {_short(name)} repeats {where[seen[name]]}; class names must "
                            f"be distinct")
        seen[name] = i
    return names


def _id(where: str, value) -> int:
    """A class id (an int or a string of digits, see `_is_int`) as int; ids past 18 digits are refused."""
    if len(str(value).strip().lstrip("+-")) > 18:
        raise UserError(f"{where}: class id {_short(value)} is out of range")
    return int(value)


def _is_int(value) -> bool:
    """An int, or a string of ASCII digits with an optional sign; never a bool."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, str) and _INTEGER.fullmatch(value.strip()) is not None


def _read_text(path: str) -> str:
    """The file as text with `\n` line ends: UTF-8 (a BOM is dropped; UTF-16 with a BOM is decoded too),
    CRLF and CR line ends read as LF; bad bytes or NUL bytes are a UserError naming the line."""
    try:
        size = os.path.getsize(path)
        if size > _MAX_TEXT_BYTES:                     # e.g. a video archive given as the list
            raise UserError(f"{path}: {size / 2**30:.1f} GiB is too large for an annotation or class-name file "
                            f"(at most {_MAX_TEXT_BYTES // 2**30} GiB of text); is it the right file?")
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    encoding = "utf-8-sig"
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        encoding = "utf-16"                            # e.g. Windows Notepad's "Unicode"
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 text ({e.reason} at byte {e.start}); save the file as "
                        f"UTF-8") from None
    if "\0" in text:
        line = text[:text.index("\0")].count("\n") + 1
        raise UserError(f"{path}:{line}: holds NUL bytes, so it is not a text annotation file (binary, or "
                        f"UTF-16 without a byte-order mark? save it as UTF-8)")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _lines(text: str) -> list[str]:
    """Lines split at `\n` only, so numbers match an editor's (str.splitlines also splits at \x0c, \x85...)."""
    return text.split("\n")


def _load_json(path: str, text: str | None = None):
    def unique_keys(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise UserError(f"{path}: key {_short(key)} appears twice in one JSON object; keep one")
            seen.add(key)
        return dict(pairs)

    try:        # jsonsafe: bounded nesting and numbers, every other problem one line naming the file
        return jsonsafe.loads(_read_text(path) if text is None else text, path, object_pairs_hook=unique_keys)
    except jsonsafe.InvalidJSON as e:
        raise UserError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
