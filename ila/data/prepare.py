"""`ila prepare`: a training-friendly copy of a dataset (short side, keyframe interval, H.264; or JPEG frame folders).

    prepare(src, out, short_side=320, gop=16)   # every annotated video -> out/videos/<relative path>.mp4

`src` is anything `read_annotations` reads in a registered format (`ANNOTATION_FORMATS`: lists, Kinetics CSV, SSv2
JSON, frame-folder lists, a folder with one subfolder per class, whose layout is kept, and whatever is registered
later). Videos are decoded once, resized in FFmpeg's scaler so the short side is `short_side`
(never enlarged), optionally resampled to `fps`, and written as H.264 (yuv420p, a keyframe every `gop` frames:
seeking then decodes at most `gop` frames) or as JPEG frames (`frames_jpeg`). Work runs in `workers` processes
with a progress bar. Every output is written under a temporary name, checked (its frames counted), then renamed:
an output that exists is finished, so a second run skips verified outputs and redoes the rest (a half-written
file never counts; stale temporaries are removed). Unreadable inputs are listed in `out/bad_inputs.tsv` and left
out. The annotation file for the copy is `out/<src name>.txt` (list format, paths relative to `out`, class
indices) with `out/classes.txt`: train with `data.root=OUT data.train_list=OUT/<name>.txt
data.class_names=OUT/classes.txt` (frame folders: `data.format=frames`).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import shutil
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from ila.atomic import write_text
from ila.data.annotations import VIDEO_EXTENSIONS, annotation_format, read_annotations
from ila.data.decode import IMAGE_EXTENSIONS, VideoReadError, VideoReader, open_video
from ila.errors import UserError
from tqdm import tqdm
from PIL import Image

PARTIAL = ".partial-"


@dataclass
class PrepareResult:
    """What a run did: outputs written, verified outputs skipped, bad inputs (path, reason), the new list."""

    written: int = 0
    skipped: int = 0
    bad: list[tuple[str, str]] = field(default_factory=list)
    annotation: str = ""
    class_names: str = ""


MAX_SHORT_SIDE, MAX_GOP, MAX_FPS, MAX_WORKERS = 8192, 100_000, 1000, 256


def output_names(paths: list[str], frames_jpeg: bool, root: str = "") -> list[str]:
    """Output paths relative to the copy's root: the inputs' paths below `root` (inputs outside it: below their
    common folder, under `outside_root/`), extension replaced (`.mp4`, or none for frame folders); the old
    extension is kept where two inputs would collide. Preparing a dataset's train and val lists with the same root
    into one copy therefore keeps them apart."""
    base = os.path.abspath(root) if root else ""
    inside = [bool(base) and os.path.abspath(p).startswith(base + os.sep) for p in paths]
    outside = [os.path.dirname(os.path.abspath(p)) for p, i in zip(paths, inside) if not i]
    other = os.path.commonpath(outside) if outside else ""
    rel = [os.path.relpath(os.path.abspath(p), base) if i else
           (os.path.join("outside_root", os.path.relpath(os.path.abspath(p), other)) if base else
            os.path.relpath(os.path.abspath(p), other)) for p, i in zip(paths, inside)]
    suffix = "" if frames_jpeg else ".mp4"
    stems = [os.path.splitext(r)[0] if os.path.splitext(r)[1] else r for r in rel]
    count: dict[str, int] = {}
    for s in stems:
        count[s] = count.get(s, 0) + 1
    prefix = "frames" if frames_jpeg else "videos"
    return [os.path.join(prefix, (s if count[s] == 1 else r.replace(".", "_")) + suffix) for s, r in zip(stems, rel)]


def prepare(src: str, out: str, short_side: int = 320, gop: int | None = None, fps: float | None = None,
            frames_jpeg: bool = False, workers: int = 1, root: str = "", fmt: str = "auto", class_names=None,
            progress: bool = True, jpeg_quality: int = 90) -> PrepareResult:
    """Write the copy (see the module); returns what was done."""
    if not 2 <= short_side <= MAX_SHORT_SIDE:
        raise UserError(f"--short-side {short_side} is not allowed; use pixels in [2, {MAX_SHORT_SIDE}]")
    if gop is not None and not 1 <= gop <= MAX_GOP:
        raise UserError(f"--gop {gop} is not allowed; use a keyframe interval in [1, {MAX_GOP}] frames")
    if fps is not None and not 0 < fps <= MAX_FPS:       # also nan, inf (an output instant would never pass the end)
        raise UserError(f"--fps {fps:g} is not allowed; use frames per second in (0, {MAX_FPS}]")
    if not 1 <= workers <= MAX_WORKERS:
        raise UserError(f"--workers {workers} is not allowed; use processes in [1, {MAX_WORKERS}]")
    if root and not os.path.isdir(root):
        raise UserError(f"--root {root}: folder not found (the annotation's paths are read relative to it)")
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out} exists and is not a folder; choose another output folder")
    if src.lower().endswith(VIDEO_EXTENSIONS) and os.path.isfile(src):
        raise UserError(f"{src} is a video; ila prepare copies a dataset: give its annotation file or a folder "
                        f"with one subfolder per class")
    if annotation_format(src, fmt).info.get("folder"):  # a dataset folder (e.g. one subfolder per class)
        same = out_dir.resolve() == Path(src).resolve()
        if same or Path(src).resolve() in out_dir.resolve().parents:
            where = "the dataset folder" if same else f"inside the dataset folder {src}"
            raise UserError(f"{out} is {where}; write the copy to another folder")
        ann, root = read_annotations(src, fmt=fmt, class_names=class_names), root or src  # the layout is kept
    else:
        ann = read_annotations(src, root=root, fmt=fmt, class_names=class_names)
    names = output_names([s.path for s in ann.samples], frames_jpeg, root)
    if out_dir.resolve() in [Path(s.path).resolve().parent for s in ann.samples[:1]]:
        raise UserError(f"{out} holds the source videos; write the copy to another folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale(out_dir)
    tasks = [(s.path, str(out_dir / n), short_side, gop, fps, frames_jpeg, jpeg_quality)
             for s, n in zip(ann.samples, names)]
    result = PrepareResult()
    done: dict[int, int] = {}                       # sample -> frames of its output
    bad: dict[int, tuple[str, str]] = {}            # sample -> (path, reason); reported in input order

    bar = tqdm(total=len(tasks), desc="prepare", unit="video", disable=not progress, dynamic_ncols=True)
    try:
        if workers == 1:
            outcomes = (_task((i, t)) for i, t in enumerate(tasks))
            pool = None
        else:
            pool = mp.get_context("spawn" if os.name == "nt" else "forkserver").Pool(min(workers, len(tasks)))
            outcomes = pool.imap_unordered(_task, list(enumerate(tasks)), chunksize=1)
        for i, status, info in outcomes:
            if status == "bad":
                bad[i] = (tasks[i][0], info)
            else:
                done[i] = int(info)
                result.written += status == "written"
                result.skipped += status == "skipped"
            bar.update(1)
        if pool is not None:
            pool.close()
            pool.join()
    finally:
        bar.close()
        if workers > 1 and pool is not None:
            pool.terminate()
    result.bad = [bad[i] for i in sorted(bad)]      # workers finish in any order; the report does not
    _write_outputs(out_dir, src, ann, names, done, result, frames_jpeg)
    if not done:                                    # nothing to train on: say so (bad_inputs.tsv lists why)
        path, why = result.bad[0]
        raise UserError(f"none of the {len(result.bad)} videos of {src} could be read (first: {path}: {why}); "
                        f"every one is listed in {out_dir / 'bad_inputs.tsv'}")
    return result


def _write_outputs(out_dir: Path, src: str, ann, names, done, result: PrepareResult, frames_jpeg: bool) -> None:
    lines = []
    for i, (sample, name) in enumerate(zip(ann.samples, names)):
        if i in done:
            lines.append(f"{name} {done[i]} {sample.label}" if frames_jpeg else f"{name} {sample.label}")
    stem = Path(src).stem or "annotations"
    if stem == "classes":                           # a folder or list named so: classes.txt holds the class names
        stem = "classes_videos"
    result.annotation = str(out_dir / f"{stem}.txt")
    write_text(result.annotation, "\n".join(lines) + ("\n" if lines else ""))
    if ann.class_names:
        result.class_names = str(out_dir / "classes.txt")
        write_text(result.class_names, "\n".join(ann.class_names) + "\n")
    bad_file = out_dir / "bad_inputs.tsv"
    if result.bad:
        write_text(bad_file, "".join(f"{p}\t{r}\n" for p, r in result.bad))
    elif bad_file.exists():
        bad_file.unlink()


def _remove_stale(out_dir: Path) -> None:
    """Temporaries of an interrupted run (files or folders with the partial marker in their name)."""
    for dirpath, dirnames, filenames in os.walk(out_dir):
        for name in list(dirnames) + filenames:
            if PARTIAL in name:
                path = os.path.join(dirpath, name)
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
                if name in dirnames:
                    dirnames.remove(name)


def _task(job):
    """(index, "written" | "skipped" | "bad", frames or reason) for one input; runs in a worker process."""
    i, (src, dest, short_side, gop, fps, frames_jpeg, quality) = job
    try:
        frames = verified_frames(dest, frames_jpeg)
        if frames:
            return i, "skipped", frames
        if frames_jpeg:
            return i, "written", _write_frames(src, dest, short_side, fps, quality)
        return i, "written", _write_video(src, dest, short_side, gop, fps)
    except VideoReadError as e:
        return i, "bad", e.reason
    except (av.error.FFmpegError, OSError, ValueError, RuntimeError) as e:
        return i, "bad", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]


def verified_frames(dest: str, frames_jpeg: bool) -> int:
    """The frame count of a finished output (0 when there is none or it does not read back)."""
    if not os.path.exists(dest):
        return 0
    try:
        if frames_jpeg:
            return sum(n.lower().endswith(IMAGE_EXTENSIONS) for n in os.listdir(dest)) if os.path.isdir(dest) else 0
        with VideoReader(dest) as reader:
            return reader.num_frames
    except (VideoReadError, OSError):
        return 0


def _scaled(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Even (width, height) with the short side at most `short_side` (never enlarged), aspect kept."""
    scale = min(1.0, short_side / min(width, height))
    return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


def _kept(times: list[float], fps: float | None) -> list[int]:
    """Frames to keep for an output rate `fps`: for each output instant k / fps, the last frame at or before it."""
    if not fps or not times:
        return list(range(len(times)))
    keep, k = [], 0
    t = np.asarray(times)
    while k / fps <= t[-1] + 1e-9:
        keep.append(int(np.searchsorted(t, k / fps + 1e-9, side="right") - 1))
        k += 1
    return [max(i, 0) for i in keep]


def _source_frames(src: str, short_side: int, fps: float | None):
    """(output rate, size, iterator of RGB uint8 frames) of a video file or frame folder, resized in FFmpeg's
    scaler (PIL for folders), rotation applied, resampled to `fps`."""
    if os.path.isdir(src):
        reader = open_video(src)
        first = reader.read([0])[0]
        w, h = _scaled(first.shape[1], first.shape[0], short_side)
        keep = _kept([k / 30.0 for k in range(reader.num_frames)], fps)   # a folder has no rate: taken as 30 fps
        resize = min(w, h) if min(w, h) < min(first.shape[:2]) else None
        return fps or 30.0, (w, h), (reader.read([i], short_side=resize)[0] for i in keep)
    with VideoReader(src) as probe:             # validates the file (one-line reasons) and gives the frame count
        source_rate = probe.fps or 30.0
        n = probe.num_frames
    container = av.open(src, metadata_errors="ignore")
    stream = container.streams.video[0]
    stream.thread_count = 1
    w, h = _scaled(stream.codec_context.width, stream.codec_context.height, short_side)
    rate = fps or source_rate
    keep = _kept([k / source_rate for k in range(n)], fps) if fps else None

    def frames():
        try:
            count, wanted = 0, None if keep is None else {}
            if keep is not None:
                for k in keep:
                    wanted[k] = wanted.get(k, 0) + 1
            for packet in container.demux(stream):
                try:
                    decoded = packet.decode()
                except av.error.FFmpegError:
                    continue
                for frame in decoded:
                    repeats = 1 if wanted is None else wanted.get(count, 0)
                    count += 1
                    if not repeats:
                        continue
                    rotation = round((getattr(frame, "rotation", 0) or 0) / 90) % 4
                    size = (h, w) if rotation % 2 else (w, h)
                    rgb = frame.to_ndarray(format="rgb24", width=size[0], height=size[1], interpolation="BILINEAR")
                    if rotation:
                        rgb = np.ascontiguousarray(np.rot90(rgb, rotation))
                    for _ in range(repeats):
                        yield rgb
        finally:
            container.close()
    return rate, (w, h), frames()


def _write_video(src: str, dest: str, short_side: int, gop: int | None, fps: float | None) -> int:
    rate, (w, h), frames = _source_frames(src, short_side, fps)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = f"{dest}{PARTIAL}{os.getpid()}.mp4"
    options = {"preset": "veryfast", "crf": "20", "threads": "1"}
    if gop:
        options.update(g=str(gop), keyint_min=str(gop), sc_threshold="0")
    written = 0
    try:
        with av.open(tmp, "w") as container:
            stream = container.add_stream("libx264", rate=Fraction(rate).limit_denominator(1001), options=options)
            stream.pix_fmt = "yuv420p"
            for rgb in frames:
                if written == 0:      # a rotated source: the size after rotation
                    stream.height, stream.width = rgb.shape[0] // 2 * 2, rgb.shape[1] // 2 * 2
                frame = av.VideoFrame.from_ndarray(rgb[: stream.height, : stream.width], format="rgb24")
                container.mux(stream.encode(frame))
                written += 1
            if written == 0:
                raise VideoReadError(src, "no frames could be decoded")
            container.mux(stream.encode())
        got = verified_frames(tmp, False)
        if got != written:
            raise VideoReadError(src, f"the copy reads back {got} of {written} frames")
        os.replace(tmp, dest)
        return written
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write_frames(src: str, dest: str, short_side: int, fps: float | None, quality: int) -> int:
    _, _, frames = _source_frames(src, short_side, fps)
    tmp = f"{dest}{PARTIAL}{os.getpid()}"
    os.makedirs(tmp, exist_ok=True)
    written = 0
    try:
        for rgb in frames:
            written += 1
            Image.fromarray(rgb).save(os.path.join(tmp, f"img_{written:05d}.jpg"), quality=quality)
        if written == 0:
            raise VideoReadError(src, "no frames could be decoded")
        if os.path.isdir(dest):                  # an unverified earlier copy
            shutil.rmtree(dest)
        os.replace(tmp, dest)
        return written
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
