"""Prediction: video files and folders in, ranked class names out; pictures of the learnable alignment.

The model, its class list and (for a text head) the class-name text features are loaded once, then
every video is scored from the checkpoint's evaluation views (`eval.clips` x `eval.crops`, per-view
softmax averaged). A text-head model accepts any new class list (zero-shot); a classifier keeps its own.
"""
from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path

import torch

from ila.engine import distributed as dist
from ila.engine.atomic import atomic_path
from ila.engine.classes import check_class_count, class_list, class_text
from ila.engine.evaluate import score_videos
from ila.errors import UserError


def video_files(inputs: list[str], errors: dict | None = None) -> list[str]:
    """Files as given, and every video inside each folder (recursively: video files and frame folders, in
    sorted order); a folder holding images directly is one frame-folder video. With `errors`, an input that
    gives nothing is recorded there (path -> reason) instead of raising."""
    from ila.data.decode import IMAGE_EXTENSIONS
    from ila.data.folders import find_videos

    found = []
    for item in inputs:
        item = str(item)
        if os.path.isdir(item):
            if any(f.lower().endswith(IMAGE_EXTENSIONS) for f in os.listdir(item)):
                found.append(item)                       # a frame folder
                continue
            inside = find_videos(item)
            if not inside:
                reason = "holds no video files (.mp4, .mkv, .webm, .avi, .mov, ... or frame folders)"
                if errors is None:
                    raise UserError(f"{item} {reason}")
                errors[item] = reason
                continue
            print(f"found {len(inside)} video(s) in {item}", file=sys.stderr)
            found += inside
        elif os.path.isfile(item):
            found.append(item)
        else:
            if errors is None:
                raise UserError(f"{item}: no such file or folder")
            errors[item] = "no such file or folder"
    return found


class Predictor:
    """A checkpoint loaded once for many videos."""

    def __init__(self, checkpoint: str | Path, classes: str | list[str] | None = None,
                 overrides: list[str] | tuple = ()):
        from ila.engine.checkpoint import load_checkpoint

        self.model, self.cfg, names, _ = load_checkpoint(checkpoint, overrides)
        self.env = dist.Env(device=dist.pick_device(dist.inference_device(self.cfg, overrides)))
        self.model.fuse().to(self.env.device)  # inference only (ila.fuse): same outputs, less work
        self.cfg.data.bad_files = "error"   # never score another video in place of an unreadable one
        self.class_names = class_list(self.cfg, names, classes, overrides, checkpoint, self.model)
        check_class_count(self.model, self.class_names, "--classes")
        self.text = class_text(self.model, self.class_names, self.env.device)

    def dataset(self, paths: list[str]):
        from ila.data.annotations import Sample
        from ila.engine.loaders import video_dataset

        samples = [Sample(path, 0) for path in paths]
        return video_dataset(self.cfg, samples, train=False, clips=self.cfg.eval.clips, crops=self.cfg.eval.crops)

    def scores(self, paths: list[str]):
        """Every video scored once in one pass (`ila.engine.evaluate.Scored`): the readable ones' indices and
        probabilities averaged over the views, and the unreadable ones as (index, path, reason)."""
        from ila.engine.loaders import loader

        dataset = self.dataset(paths)
        dataset.bad_file_policy = "mark"    # a bad file is reported, never replaced by another video
        data = loader(dataset, self.cfg.eval.batch_size, dist.ShardSampler(len(dataset), self.env),
                      min(self.cfg.data.workers, len(paths) - 1), 0)
        return score_videos(self.model, data, self.env, self.text, len(self.class_names),
                            progress=len(paths) > 1, desc="predict")

    def ranked(self, row: torch.Tensor, topk: int) -> list[dict]:
        p, i = row.topk(min(topk, len(self.class_names)))
        return [{"class": self.class_names[c], "probability": round(float(q), 6)} for q, c in zip(p.tolist(), i.tolist())]

    def predict(self, paths: list[str], topk: int = 5) -> list[dict]:
        """For each video: its path and the top-k classes with probabilities, or its path and an `error`
        (one unreadable video does not stop the others)."""
        rows: dict = {}
        if paths:
            scored = self.scores(paths)
            rows.update((paths[i], row) for i, row in zip(scored.indices.tolist(), scored.scores))
            rows.update((paths[i], reason) for i, _, reason in scored.failed)
        return [{"video": path, "error": rows[path]} if isinstance(rows[path], str)
                else {"video": path, "predictions": self.ranked(rows[path], topk)} for path in paths]

    def check_visualize(self, block: int) -> None:
        """Refuse a model without alignment or a block it does not have (before any video is read)."""
        layers = self.cfg.model.vision_layers
        if self.cfg.model.temporal != "ila":
            raise UserError(f"--visualize shows ILA's alignment; this model has temporal={self.cfg.model.temporal!r}")
        if not -layers <= block < layers:
            raise UserError(f"--block {block} is out of range; the model has blocks 0..{layers - 1} (or -1 for the last)")

    def visualize(self, path: str, out: str | Path, block: int = -1, result: dict | None = None) -> Path:
        """A picture of one video's frame pairs with the interactive points and alignment masks of `block`,
        titled with the predicted class and its probability."""
        self.check_visualize(block)
        layers = self.cfg.model.vision_layers
        video = self.dataset([path])[0]["video"][:1].to(self.env.device)    # first view: (1, T, 3, S, S)
        maps = self.model.alignment_maps(video, block)
        title = f"{os.path.basename(os.path.normpath(path))}: block {block % layers}"
        if result and result.get("predictions"):
            top = result["predictions"][0]
            title += f"; predicted {top['class']} ({top['probability']:.1%})"
        return draw_alignment(video[0].cpu(), maps["points"][0].cpu(), maps["masks"][0].cpu(), out, title=title)

    # ------------------------------------------------------------------ long videos
    def windows(self, path: str, window: float, stride: float, topk: int) -> dict:
        """Sliding windows of `window` seconds every `stride` seconds over one video: T frames spread evenly
        over each window (the middle of T equal segments), read by seeking (only those frames are decoded),
        `eval.batch_size` windows at a time, so memory does not grow with the video's length. A last window
        ending at the video's end is added when the stride leaves the tail uncovered. Returns the video's
        duration and, per window, its start/end time (s), the top-k and all class probabilities."""
        import numpy as np

        from ila.data.decode import open_video
        from ila.data.transforms import TestTransform

        cfg, t = self.cfg, self.cfg.data.num_frames
        transform = TestTransform(cfg.data.input_size, cfg.eval.crops)
        with open_video(path) as reader:
            fps = getattr(reader, "fps", 0.0)
            if not fps:
                raise UserError(f"{path}: --window needs a video file with a frame rate (a frame folder has none)")
            n = reader.num_frames
            duration = n / fps
            spans = window_spans(duration, window, stride)
            out = []
            for first in range(0, len(spans), cfg.eval.batch_size):
                batch = spans[first:first + cfg.eval.batch_size]
                indices = []
                for start, end in batch:
                    lo = min(int(round(start * fps)), n - 1)
                    hi = max(min(int(round(end * fps)), n), lo + 1)
                    indices.append(lo + np.minimum(((np.arange(t) + 0.5) * (hi - lo) / t).astype(np.int64), hi - lo - 1))
                frames = reader.read(np.concatenate(indices), short_side=transform.short_side)
                clips = torch.from_numpy(frames).permute(0, 3, 1, 2).reshape(len(batch), t, 3, *frames.shape[1:3])
                views = torch.stack([transform(c) for c in clips])             # (B, crops, T, 3, S, S)
                with torch.no_grad():
                    logits = self.model(views.flatten(0, 1).to(self.env.device), **self.text.kwargs()).logits
                probs = logits.float()[:, :len(self.class_names)].softmax(-1).view(len(batch), -1, len(self.class_names))
                for (start, end), row in zip(batch, probs.mean(1).cpu()):
                    out.append({"start": round(start, 3), "end": round(end, 3), "predictions": self.ranked(row, topk),
                                "probabilities": row})
        return {"video": path, "duration": round(duration, 3), "window": window, "stride": stride, "windows": out}


def window_spans(duration: float, window: float, stride: float) -> list[tuple[float, float]]:
    """(start, end) seconds of sliding windows over a video of `duration` seconds (one window when shorter)."""
    if duration <= window:
        return [(0.0, duration)]
    count = int((duration - window) / stride + 1e-9) + 1
    spans = [(k * stride, k * stride + window) for k in range(count)]
    if spans[-1][1] < duration - 1e-6:
        spans.append((duration - window, duration))
    return spans


def draw_alignment(video: torch.Tensor, points: torch.Tensor, masks: torch.Tensor, out: str | Path,
                   title: str = "") -> Path:
    """Frame pairs as columns (previous frame above, current below), each with its alignment mask shaded
    over it and its interactive point marked, with a legend. video (T,3,S,S) normalised; points (T-1,4);
    masks (T-1,2,g,g). The picture format follows the file name's suffix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from ila.data.transforms import MEAN, STD

    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    frames = ((video.float() * std + mean) / 255).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    pairs, size, grid = points.shape[0], frames.shape[1], masks.shape[-1]
    fig, axes = plt.subplots(2, pairs, figsize=(2.1 * pairs + 1.2, 5.4), squeeze=False, layout="constrained")
    shade = None
    for t in range(pairs):
        for row, (frame, mask, (x, y)) in enumerate(((frames[t], masks[t, 0], points[t, :2]),
                                                     (frames[t + 1], masks[t, 1], points[t, 2:]))):
            ax = axes[row, t]
            ax.imshow(frame, extent=(0, size, size, 0))
            shade = ax.imshow(mask.numpy(), cmap="magma", alpha=0.45, vmin=0, vmax=1, extent=(0, size, size, 0),
                              interpolation="nearest")
            # grid coordinate c in [-1, 1] puts cell k at 2k/(g-1) - 1; cell k spans pixels [k, k+1] * size/g
            px = lambda c: ((float(c) + 1) / 2 * (grid - 1) + 0.5) * size / grid  # noqa: E731
            ax.plot(px(x), px(y), marker="+", color="cyan", markersize=12, markeredgewidth=2)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(f"frame {t + row}" + (" (previous)" if row == 0 else " (current)"), fontsize=8)
    fig.colorbar(shade, ax=axes, fraction=0.03, label="alignment mask weight (shaded over the frame)")
    fig.legend(handles=[Line2D([], [], marker="+", color="cyan", linestyle="none", markersize=12, markeredgewidth=2,
                               label="interactive point: where the pair is aligned")],
               loc="outside lower center", fontsize=8, frameon=False)
    fig.suptitle(title or "alignment", fontsize=10)
    _save_figure(fig, out)
    plt.close(fig)
    return Path(out)


def draw_timeline(result: dict, class_names: list[str], out: str | Path, top: int = 5) -> Path:
    """Class probabilities over time (window centres) for one video: the `top` classes that peak highest
    drawn and labelled, the others faint grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    windows = result["windows"]
    centres = [(w["start"] + w["end"]) / 2 for w in windows]
    probs = torch.stack([w["probabilities"] for w in windows])                    # (windows, classes)
    order = probs.max(0).values.argsort(descending=True).tolist()
    fig, ax = plt.subplots(figsize=(10, 3.8), layout="constrained")
    for c in order[top:]:
        ax.plot(centres, probs[:, c].numpy(), color="lightgrey", linewidth=0.8)
    for c in order[:top]:
        ax.plot(centres, probs[:, c].numpy(), marker="o" if len(windows) <= 60 else None, markersize=3,
                label=class_names[c])
    ax.set(xlabel="time (s, window centre)", ylabel="probability", ylim=(0, 1), xlim=(0, max(result["duration"], 1e-3)),
           title=f"{os.path.basename(result['video'])}: {len(windows)} windows of {result['window']:g} s "
                 f"every {result['stride']:g} s")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), title=f"top {min(top, len(order))} classes")
    _save_figure(fig, out)
    plt.close(fig)
    return Path(out)


def _save_figure(fig, out: str | Path) -> None:
    suffix = Path(out).suffix.lower().lstrip(".")
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100, format=suffix)


def picture_formats() -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return sorted(Figure().canvas.get_supported_filetypes())


def is_folder_target(path: str | Path) -> bool:
    """A picture output naming a folder (a trailing slash, or an existing folder without a suffix): one
    picture per video inside it, named after the video."""
    return str(path).endswith(("/", os.sep)) or (Path(path).is_dir() and not Path(path).suffix)


def check_output(path: str | Path, flag: str, picture: bool = False) -> Path:
    """An output file path that can be written: not a folder, its folder creatable, (pictures) a suffix
    matplotlib writes, or a folder for one picture per video. Checked before any video is read; a UserError
    line otherwise."""
    if picture and is_folder_target(path):
        return check_output(Path(path) / "video.png", flag, picture).parent
    path = Path(path)
    if picture:
        formats = picture_formats()
        suffix = path.suffix.lower().lstrip(".")
        if suffix not in formats:
            raise UserError(f"{flag} {path}: the picture format comes from the file name's suffix; "
                            f"{'.' + suffix + ' is not one matplotlib writes' if suffix else 'it has none'} "
                            f"(use .png, .pdf, .svg, .jpg, ...; or a folder ending in / for one picture per video)")
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; give a file name inside it, e.g. {path / ('out.png' if picture else 'out.csv')}")
    parent = path.parent
    blocker = next((p for p in [parent, *parent.parents] if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise UserError(f"{flag} {path}: cannot create a folder there, {blocker} is a file")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot create {parent} ({e.strerror})") from None
    if not os.access(parent, os.W_OK):
        raise UserError(f"{flag} {path}: {parent} is not writable")
    return path


def picture_stems(paths: list[str]) -> dict[str, str]:
    """A distinct name for each video's pictures: its file name without suffix, with its folder's name in front
    where two videos share a name (class folders often do), and a number where even that repeats."""
    stems = {p: Path(os.path.normpath(p)).stem or "video" for p in paths}
    repeated = {s for s in stems.values() if list(stems.values()).count(s) > 1}
    used: set[str] = set()
    for p in paths:
        stem = stems[p]
        if stem in repeated:
            stem = f"{Path(os.path.normpath(p)).parent.name}-{stem}".lstrip("-")
        base, k = stem, 2
        while stem in used:
            stem, k = f"{base}-{k}", k + 1
        used.add(stem)
        stems[p] = stem
    return stems


def per_video(out: str, stem: str, many: bool) -> Path:
    """The picture of one video: in a folder `out/`, STEM.png; else `out` itself for a single video, and
    `out`'s name with the video's STEM added for several."""
    if is_folder_target(out):
        return Path(out) / f"{stem}.png"
    out = Path(out)
    return out.with_name(f"{out.stem}-{stem}{out.suffix}") if many else out


def format_predictions(results: list[dict]) -> str:
    lines = []
    for r in results:
        if "error" in r:
            continue
        if "windows" in r:
            lines.append(f"{r['video']} ({r['duration']:.1f} s, {len(r['windows'])} windows of {r['window']:g} s "
                         f"every {r['stride']:g} s)")
            for w in r["windows"]:
                top = ", ".join(f"{p['class']} {p['probability']:.1%}" for p in w["predictions"])
                lines.append(f"  {w['start']:8.2f}-{w['end']:8.2f} s  {top}")
            continue
        lines.append(r["video"])
        lines += [f"  {p['probability']:7.2%}  {p['class']}" for p in r["predictions"]]
    return "\n".join(lines)


def predictions_csv(results: list[dict]) -> str:
    """One row per (video, window, rank): video,start,end,rank,class,probability (start/end empty without
    --window); a bad video is one row with its error."""
    buf = io.StringIO()
    rows = csv.writer(buf, lineterminator="\n")
    rows.writerow(["video", "start", "end", "rank", "class", "probability", "error"])
    for r in results:
        if "error" in r:
            rows.writerow([r["video"], "", "", "", "", "", r["error"]])
            continue
        for w in r.get("windows") or [{"start": "", "end": "", "predictions": r["predictions"]}]:
            for rank, p in enumerate(w["predictions"], 1):
                rows.writerow([r["video"], w["start"], w["end"], rank, p["class"], f"{p['probability']:.6f}", ""])
    return buf.getvalue()


def run_predict(checkpoint: str | Path, inputs: list[str], topk: int = 5, as_json: bool = False,
                classes: str | None = None, visualize: str | None = None, block: int = -1,
                overrides: list[str] | tuple = (), window: float | None = None, stride: float | None = None,
                csv_out: str | None = None, timeline: str | None = None) -> int:
    """`ila predict`: print the top-k classes of every video (or of every window of each video with
    `window`); optionally a CSV, alignment pictures and timelines. Every output path is checked before any
    video is read. Returns the exit status: 0, or 1 when some videos could not be read (each is named)."""
    import math

    if topk < 1:
        raise UserError(f"--topk {topk}: use 1 or more")
    if stride is not None and window is None:
        raise UserError("--stride needs --window SECONDS")
    if window is not None:
        if not (math.isfinite(window) and window > 0):
            raise UserError(f"--window {window}: give a window length in seconds > 0")
        stride = window if stride is None else stride
        if not (math.isfinite(stride) and stride > 0):
            raise UserError(f"--stride {stride}: give a stride in seconds > 0")
    if timeline and window is None:
        raise UserError("--timeline needs --window SECONDS (it plots the windows' class probabilities over time)")
    for path, flag, picture in ((visualize, "--visualize", True), (timeline, "--timeline", True), (csv_out, "--csv", False)):
        if path:
            check_output(path, flag, picture)             # before any video is read
    errors: dict[str, str] = {}
    paths = video_files(inputs, errors if len(inputs) > 1 else None)
    predictor = Predictor(checkpoint, classes, overrides)
    if visualize:
        predictor.check_visualize(block)
    if window is None:
        results = predictor.predict(paths, topk)
    else:
        from ila.data.decode import VideoReadError

        results = []
        for path in paths:
            try:
                results.append(predictor.windows(path, window, stride, topk))
            except VideoReadError as e:
                results.append({"video": path, "error": e.reason})
            except UserError as e:
                results.append({"video": path, "error": str(e)})
    results += [{"video": path, "error": reason} for path, reason in errors.items()]
    failed = [r for r in results if "error" in r]
    if len(results) == 1 and failed:
        raise UserError(f"{failed[0]['video']}: {failed[0]['error']}")
    shown = [{**r, "windows": [{k: v for k, v in w.items() if k != "probabilities"} for w in r["windows"]]}
             if "windows" in r else r for r in results]
    print(json.dumps(shown, indent=2) if as_json else format_predictions(shown))
    for r in failed:
        print(f"ila predict: error: {r['video']}: {r['error']}", file=sys.stderr)
    if csv_out:
        from ila.engine.atomic import write_text

        write_text(csv_out, predictions_csv(shown))
        print(f"wrote {csv_out}", file=sys.stderr)
    good = [r for r in results if "error" not in r]
    stems = picture_stems([r["video"] for r in good])
    for r in good:
        if visualize:
            target = per_video(visualize, stems[r["video"]], len(good) > 1)
            predictor.visualize(r["video"], target, block, r if "predictions" in r else None)
            print(f"wrote {target}", file=sys.stderr)
        if timeline:
            target = per_video(timeline, stems[r["video"]], len(good) > 1)
            draw_timeline(r, predictor.class_names, target)
            print(f"wrote {target}", file=sys.stderr)
    if failed:
        print(f"ila predict: {len(failed)} of {len(results)} video(s) could not be read", file=sys.stderr)
    return 1 if failed else 0
