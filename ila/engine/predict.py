"""Prediction: video files and folders in, ranked class names out; pictures of the learnable alignment.

The model is loaded once into an inference session (`ila.engine.session`: weights, fuse, class names and
text features, the one loop over videos), then every video is scored from the model's evaluation views
(`eval.clips` x `eval.crops`, per-view softmax averaged), or, with `--window`, every window of a long video.
A text-head model accepts any new class list (zero-shot); a classifier names exactly its outputs.
"""
from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path

import torch

from ila.atomic import atomic_path, output_file, write_text
from ila.data.decode import IMAGE_EXTENSIONS, VideoReadError
from ila.data.folders import find_videos
from ila.data.stream import DEFAULT_TIMEOUT, StreamStopped, check_stream_url, check_timeout, is_stream, is_url_like
from ila.data.transforms import MEAN, STD
from ila.engine.live import format_window, shown, stream_windows
from ila.engine.session import InferenceSession, check_window_seconds
from ila.errors import UserError, printable

# `ila predict`'s exit status when a live stream stops sending (no frame for --timeout seconds) or breaks off
STREAM_STOPPED = 3


def video_files(inputs: list[str], errors: dict | None = None) -> list[str]:
    """Files as given, and every video inside each folder (recursively: video files and frame folders, in
    sorted order; links followed, each real folder once: `find_videos`); a folder holding images directly is one
    frame-folder video. With `errors`, an input that gives nothing is recorded there (path -> reason) instead of
    raising."""
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


def check_visualize(session, block: int) -> None:
    """Refuse a model without alignment maps or a block it does not have (before any video is read)."""
    layers = session.cfg.model.vision_layers
    blocks = session.model.visual.transformer.resblocks
    with_maps = [i for i, b in enumerate(blocks) if getattr(b, "has_alignment_maps", False)]
    if not with_maps:
        raise UserError(f"--visualize shows the learnable alignment's points; the blocks of this model "
                        f"(temporal={session.cfg.model.temporal!r}) have none")
    if not -layers <= block < layers:
        raise UserError(f"--block {block} is out of range; the model has blocks 0..{layers - 1} (or -1 for the last)")
    if block % layers not in with_maps:         # model.align_blocks left this one a plain CLIP block
        raise UserError(f"--block {block}: block {block % layers} does not align frames "
                        f"(model.align_blocks={session.cfg.model.align_blocks}); choose one of "
                        f"{', '.join(map(str, with_maps))}")


def draw_points(session, path: str, out: str | Path, block: int = -1, result: dict | None = None,
                name: str | None = None) -> Path:
    """A picture of one video's frame pairs with the interactive points and alignment masks of `block`,
    titled with the video's `name` (default: its file name), the predicted class and its probability."""
    check_visualize(session, block)
    layers = session.cfg.model.vision_layers
    video = session.first_view(path)                                   # (1, T, 3, S, S)
    maps = session.model.alignment_maps(video, block)
    title = f"{name or os.path.basename(os.path.normpath(path))}: block {block % layers}"
    if result and result.get("predictions"):
        top = result["predictions"][0]
        title += f"; predicted {top['class']} ({top['probability']:.1%})"
    return draw_alignment(video[0].cpu(), maps["points"][0].cpu(), maps["masks"][0].cpu(), out, title=title,
                          pair_frames=maps.get("frames"))


def draw_alignment(video: torch.Tensor, points: torch.Tensor, masks: torch.Tensor, out: str | Path,
                   title: str = "", pair_frames: torch.Tensor | None = None) -> Path:
    """Frame pairs as columns (previous frame above, current below), each with its alignment mask shaded
    over it and its interactive point marked, with a legend. video (T,3,S,S) normalised; points (T-1,4);
    masks (T-1,2,g,g); pair_frames (T-1,2): the frames of each pair's sides (None: adjacent frames t, t+1).
    The picture format follows the file name's suffix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D


    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    frames = ((video.float() * std + mean) / 255).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    pairs, size, grid = points.shape[0], frames.shape[1], masks.shape[-1]
    fig, axes = plt.subplots(2, pairs, figsize=(2.1 * pairs + 1.2, 5.4), squeeze=False, layout="constrained")
    shade = None
    sides = [(t, t + 1) for t in range(pairs)] if pair_frames is None else pair_frames.tolist()
    for t, (before, after) in enumerate(sides):
        for row, (index, mask, (x, y)) in enumerate(((before, masks[t, 0], points[t, :2]),
                                                     (after, masks[t, 1], points[t, 2:]))):
            frame = frames[index]
            ax = axes[row, t]
            ax.imshow(frame, extent=(0, size, size, 0))
            shade = ax.imshow(mask.numpy(), cmap="magma", alpha=0.45, vmin=0, vmax=1, extent=(0, size, size, 0),
                              interpolation="nearest")
            # grid coordinate c in [-1, 1] puts cell k at 2k/(g-1) - 1; cell k spans pixels [k, k+1] * size/g
            px = lambda c: ((float(c) + 1) / 2 * (grid - 1) + 0.5) * size / grid  # noqa: E731
            ax.plot(px(x), px(y), marker="+", color="cyan", markersize=12, markeredgewidth=2)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(f"frame {index}" + (" (previous)" if row == 0 else " (current)"), fontsize=8)
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
    output_file(path, flag)                       # FIFOs, devices, looping links: refused before any video is read
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


def check_window_flags(window, stride) -> tuple:
    """`ila predict`'s --window/--stride before any video is read: (window, stride), the stride defaulting to the
    window; each finite and at least `MIN_WINDOW_SECONDS` (each video's own frame interval, and the window
    count cap, are checked when it is read: `window_spans`); (None, None) without --window. A one-line
    UserError otherwise."""
    if window is None:
        if stride is not None:
            raise UserError("--stride needs --window SECONDS")
        return None, None
    window = check_window_seconds("--window", window)
    return window, check_window_seconds("--stride", window if stride is None else stride)


def windows_of(session: InferenceSession, path: str, window: float, stride: float, topk: int) -> dict:
    """`session.windows` of one video, or `{"video": path, "error": reason}` when it cannot be read."""
    try:
        return session.windows(path, window, stride, topk)
    except VideoReadError as e:
        return {"video": path, "error": e.reason}
    except UserError as e:
        return {"video": path, "error": str(e)}


def stream_input(inputs: list) -> str | None:
    """The live stream among `inputs` (`ila.data.stream.is_stream`: an rtsp://, tcp://, http(s)://, ... URL or
    /dev/videoN), or None when they are files and folders. A `scheme:` name that is no local path and no stream
    (file:, concat:, pipe:, subfile:, ...) is refused, and so is a stream given with anything else (one line)."""
    streams = [str(i) for i in inputs if is_stream(i) or (is_url_like(i) and not os.path.exists(i))]
    for name in streams:
        check_stream_url(name)
    if streams and len(inputs) > 1:
        raise UserError(f"{printable(streams[0])[:200]}: a live stream is read on its own; give one stream URL per "
                        f"ila predict (files and folders in another)")
    return streams[0] if streams else None


def run_stream(session: InferenceSession, url: str, window: float, stride: float, topk: int, as_json: bool,
               timeout: float) -> int:
    """`ila predict URL`: each window of the live stream printed as soon as it is scored (a line, or one JSON
    object per line), stdout flushed each time. Returns 0 when the sender ends the stream, `STREAM_STOPPED` after
    `timeout` seconds without a frame or when the connection breaks (one line on stderr says which)."""
    print(f"reading {url}: windows of {window:g} s every {stride:g} s, scored as each completes (Ctrl-C stops)",
          file=sys.stderr, flush=True)
    count = 0
    try:
        for result in stream_windows(session, url, window, stride, topk, timeout):
            print(json.dumps(shown(result)) if as_json else format_window(result), flush=True)
            count += 1
    except StreamStopped as e:
        print(f"ila predict: {printable(e)[:4000]}; {count} window(s) scored", file=sys.stderr, flush=True)
        return STREAM_STOPPED
    print(f"ila predict: {url}: the stream ended; {count} window(s) scored", file=sys.stderr, flush=True)
    return 0


def run_predict(checkpoint: str | Path, inputs: list[str], topk: int = 5, as_json: bool = False,
                classes: str | None = None, visualize: str | None = None, block: int = -1,
                overrides: list[str] | tuple = (), window: float | None = None, stride: float | None = None,
                csv_out: str | None = None, timeline: str | None = None, temporal: str | None = None,
                timeout: float | None = None, precision: str = "fp32") -> int:
    """`ila predict`: print the top-k classes of every video (or of every window of each video with
    `window`); optionally a CSV, alignment pictures and timelines. Every output path is checked before any
    video is read. Returns the exit status: 0, or 1 when some videos could not be read (each is named). A live
    stream (`stream_input`) is read in windows (`run_stream`; `timeout`: seconds without a frame before it counts
    as stopped, exit status `STREAM_STOPPED`)."""
    if topk < 1:
        raise UserError(f"--topk {topk}: use 1 or more")
    window, stride = check_window_flags(window, stride)
    url = stream_input(inputs)
    if url is None and timeout is not None:
        raise UserError("--timeout applies to live streams (rtsp://, tcp://, http(s)://, ... or /dev/videoN)")
    if url is not None:
        timeout = check_timeout(DEFAULT_TIMEOUT if timeout is None else timeout)
        if window is None:
            raise UserError(f"{printable(url)[:200]}: a live stream is scored in windows as it plays; give --window "
                            f"SECONDS (and --stride SECONDS)")
        for value, flag in ((visualize, "--visualize"), (timeline, "--timeline"), (csv_out, "--csv")):
            if value:
                raise UserError(f"{flag} is not available for a live stream; --json prints one JSON object per "
                                f"window as it comes (redirect it to a file)")
        session = InferenceSession(checkpoint, classes, overrides, temporal=temporal, precision=precision)
        return run_stream(session, url, window, stride, topk, as_json, timeout)
    if timeline and window is None:
        raise UserError("--timeline needs --window SECONDS (it plots the windows' class probabilities over time)")
    for path, flag, picture in ((visualize, "--visualize", True), (timeline, "--timeline", True), (csv_out, "--csv", False)):
        if path:
            check_output(path, flag, picture)             # before any video is read
    errors: dict[str, str] = {}
    paths = video_files(inputs, errors if len(inputs) > 1 else None)
    session = InferenceSession(checkpoint, classes, overrides, temporal=temporal, precision=precision)
    if visualize:
        check_visualize(session, block)
    if window is None:
        results = session.predict(paths, topk)
    else:
        results = [windows_of(session, path, window, stride, topk) for path in paths]
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
        write_text(csv_out, predictions_csv(shown))
        print(f"wrote {csv_out}", file=sys.stderr)
    good = [r for r in results if "error" not in r]
    stems = picture_stems([r["video"] for r in good])
    for r in good:
        if visualize:
            target = per_video(visualize, stems[r["video"]], len(good) > 1)
            draw_points(session, r["video"], target, block, r if "predictions" in r else None)
            print(f"wrote {target}", file=sys.stderr)
        if timeline:
            target = per_video(timeline, stems[r["video"]], len(good) > 1)
            draw_timeline(r, session.class_names, target)
            print(f"wrote {target}", file=sys.stderr)
    if failed:
        print(f"ila predict: {len(failed)} of {len(results)} video(s) could not be read", file=sys.stderr)
    return 1 if failed else 0
