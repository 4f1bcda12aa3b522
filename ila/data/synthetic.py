"""The generated motion dataset behind `ila make-dataset`: classes that only frame order separates.

Each class has a time-reversed twin (left to right / right to left, growing / shrinking, fading in /
out, clockwise / anticlockwise, ...). A clip of the twin is a clip of its partner rendered from the
same distribution and played backwards, so the set of frames of a video says nothing about its class
within a pair: a model that ignores frame order cannot exceed 50 %. Each clip has a random shape,
colour, size, speed, a textured background and static distractors. Frames are written as intra-only
H.264 at a constant quantiser, so every frame is coded on its own and reversal leaves the decoded
frames exactly reversed. Clip i of a split depends only on (seed, split, i).
"""
from __future__ import annotations

import math
import os
import time

import av
import numpy as np

from ila.atomic import write_text
from ila.data.positions import POSITIONS_FILE, positions_json
from ila.errors import UserError

MOTIONS = {
    "horizontal": ("moving left to right", "moving right to left"),
    "vertical": ("moving top to bottom", "moving bottom to top"),
    "scale": ("approaching (growing)", "receding (shrinking)"),
    "fade": ("appearing (fading in)", "disappearing (fading out)"),
    "rotation": ("rotating clockwise", "rotating anticlockwise"),
}
DEFAULT_PAIRS = ("horizontal", "scale", "fade", "rotation")
SHAPES = ("disc", "square", "triangle", "pacman", "ell")
ROTATION_SHAPES = ("pacman", "ell")   # no rotational symmetry: the turning direction is always visible
_SPLITS = {"train": 0, "val": 1}


def class_names(pairs=DEFAULT_PAIRS) -> list[str]:
    """Class names in label order: pair p gives classes 2p (forward) and 2p + 1 (its reversal)."""
    _check_pairs(pairs)
    return [name for kind in pairs for name in MOTIONS[kind]]


def hflip_label_swap(pairs=DEFAULT_PAIRS) -> dict[int, int]:
    """The label map for horizontal flips: left/right and clockwise/anticlockwise classes swap."""
    return {2 * p: 2 * p + 1 for p, kind in enumerate(pairs) if kind in ("horizontal", "rotation")}


def make_dataset(out_dir: str, num_train: int = 1280, num_val: int = 320, size: int = 64, frames: int = 16,
                 seed: int = 0, *, pairs=DEFAULT_PAIRS, fps: int = 16, motion=(0.5, 0.85),
                 object_size=(0.12, 0.22), distractors: int = 2, texture: float = 0.5,
                 min_contrast: float = 120.0, qp: int = 20, verbose: bool = True, layout: str = "lists",
                 flicker: bool = False) -> str:
    """Write `train/` and `val/` H.264 MP4 clips, `train.txt` / `val.txt` (`path label`) and `classes.txt`;
    with layout="folders", `train/CLASS/` and `val/CLASS/` class folders instead, and no list files. Beside them,
    `positions.json` (`ila.data.positions`) records each frame's object centre (for `point_error`).

    motion: range of the motion amplitude as a fraction of the largest one (travel across the frame,
    growth, rotation up to 180 degrees, fade ramp speed); object_size: range of the object radius as a
    fraction of the frame side; distractors: static shapes per clip; texture: background texture
    strength (0 = flat); min_contrast: least RGB distance between the object and the background mean;
    qp: H.264 quantiser (0 = lossless); flicker: the background texture drawn anew in every frame (`render_clip`).
    Returns out_dir.
    """
    _check_args(num_train, num_val, size, frames, pairs, motion, object_size, distractors, texture, qp)
    if layout not in ("lists", "folders"):
        raise UserError(f"layout {layout!r}: use lists or folders")
    start = time.perf_counter()
    names = class_names(pairs)
    os.makedirs(out_dir, exist_ok=True)
    if layout == "lists":
        with open(os.path.join(out_dir, "classes.txt"), "w") as f:
            f.write("".join(n + "\n" for n in names))
    params = dict(pairs=tuple(pairs), motion=motion, object_size=object_size, distractors=distractors,
                  texture=texture, min_contrast=min_contrast, flicker=flicker)
    centres = {}
    for split, count in (("train", num_train), ("val", num_val)):
        os.makedirs(os.path.join(out_dir, split), exist_ok=True)
        lines = []
        for i in range(count):
            label = i % len(names)
            rel = f"{split}/{i:06d}.mp4" if layout == "lists" else f"{split}/{names[label]}/{i:06d}.mp4"
            os.makedirs(os.path.dirname(os.path.join(out_dir, rel)), exist_ok=True)
            clip, centres[rel] = render_clip(label, size, frames, np.random.default_rng([seed, _SPLITS[split], i]),
                                             centres=True, **params)
            write_mp4(os.path.join(out_dir, rel), clip, fps=fps, qp=qp)
            lines.append(f"{rel} {label}\n")
        if layout == "lists":
            with open(os.path.join(out_dir, f"{split}.txt"), "w") as f:
                f.write("".join(lines))
    write_text(os.path.join(out_dir, POSITIONS_FILE), positions_json(centres, (size, size)))
    if verbose:
        print(f"wrote {num_train} train + {num_val} val clips ({len(names)} classes in {len(pairs)} "
              f"time-reversed pairs, {frames} frames of {size}x{size}) to {out_dir}"
              f"{' as class folders' if layout == 'folders' else ''} "
              f"in {time.perf_counter() - start:.1f} s")
    return out_dir


APPEARANCE_COLOURS = {"red": (225, 35, 35), "green": (35, 200, 50), "blue": (40, 70, 235)}


def appearance_class_names() -> list[str]:
    """Classes of the appearance set: shape x colour family, label = shape index * colours + colour index."""
    return [f"{colour} {shape}" for shape in SHAPES for colour in APPEARANCE_COLOURS]


def make_appearance_dataset(out_dir: str, num_train: int = 1280, num_val: int = 320, size: int = 64,
                            frames: int = 16, seed: int = 0, *, pairs=DEFAULT_PAIRS, motion=(0.5, 0.85),
                            distractors: int = 2, texture: float = 0.5, qp: int = 20,
                            verbose: bool = True) -> str:
    """Clips of the motion set's distribution (any of its motions except fades, which hide the object) whose
    label is the object's appearance, not its motion: one of `appearance_class_names()` (shape x colour
    family, the colour jittered by up to +-25 per channel). For pretraining an image tower on single frames.
    Same files as `make_dataset`; clip i of a split depends only on (seed, split, i)."""
    _check_args(num_train, num_val, size, frames, pairs, motion, (0.12, 0.22), distractors, texture, qp)
    start = time.perf_counter()
    names = appearance_class_names()
    motions = [label for label in range(2 * len(pairs)) if pairs[label // 2] != "fade"]
    if not motions:
        raise UserError("the appearance set needs a motion pair other than fade")
    colours = list(APPEARANCE_COLOURS.values())
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "classes.txt"), "w") as f:
        f.write("".join(n + "\n" for n in names))
    for split, count in (("train", num_train), ("val", num_val)):
        os.makedirs(os.path.join(out_dir, split), exist_ok=True)
        lines = []
        for i in range(count):
            label = i % len(names)
            rng = np.random.default_rng([seed, 2 + _SPLITS[split], i])
            colour = np.clip(np.asarray(colours[label % len(colours)], np.float32) + rng.uniform(-25, 25, 3), 0, 255)
            clip = render_clip(motions[int(rng.integers(len(motions)))], size, frames, rng, pairs=tuple(pairs),
                               motion=motion, distractors=distractors, texture=texture,
                               shape=SHAPES[label // len(colours)], colour=colour)
            rel = f"{split}/{i:06d}.mp4"
            write_mp4(os.path.join(out_dir, rel), clip, qp=qp)
            lines.append(f"{rel} {label}\n")
        with open(os.path.join(out_dir, f"{split}.txt"), "w") as f:
            f.write("".join(lines))
    if verbose:
        print(f"wrote {num_train} train + {num_val} val appearance clips ({len(names)} shape x colour classes, "
              f"{frames} frames of {size}x{size}) to {out_dir} in {time.perf_counter() - start:.1f} s")
    return out_dir


def render_clip(label: int, size: int, frames: int, rng: np.random.Generator, pairs=DEFAULT_PAIRS,
                motion=(0.5, 0.85), object_size=(0.12, 0.22), distractors: int = 2, texture: float = 0.5,
                min_contrast: float = 120.0, shape: str | None = None, colour=None, centres: bool = False,
                flicker: bool = False):
    """One clip of class `label` as uint8 (frames, size, size, 3): the forward motion of its pair,
    played backwards for an odd label; `shape` / `colour` (RGB) fix the object's appearance. `centres=True`:
    (clip, centres) with the object's centre in each frame, float (frames, 2) as (x, y) in pixels (pixel i spans
    [i, i + 1]), NaN where the object is invisible (a fade at opacity 0). The random draws are the same either
    way. `flicker=True`: the background's texture is drawn anew in every frame (same colour, same distractors), so
    the moving object is the only thing two frames share (the clip's other draws, and so its object, stay those of
    `flicker=False`)."""
    kind = pairs[label // 2]
    base = rng.uniform(40, 215, 3).astype(np.float32)
    background = _background(size, rng, texture, base)
    placed = []
    for _ in range(distractors):
        other = SHAPES[int(rng.integers(len(SHAPES)))]
        r = rng.uniform(*object_size) * size * 0.8
        cx, cy = rng.uniform(0, size, 2)
        placed.append((other, cx, cy, r, rng.uniform(0, 2 * math.pi), rng.uniform(0, 255, 3)))
        _draw(background, *placed[-1])
    if colour is None:
        colour = _contrasting_colour(background.reshape(-1, 3).mean(0), min_contrast, rng)
    if shape is None:
        shapes = ROTATION_SHAPES if kind == "rotation" else SHAPES
        shape = shapes[int(rng.integers(len(shapes)))]
    r = rng.uniform(*object_size) * size
    m = rng.uniform(*motion)
    t = np.linspace(0.0, 1.0, frames)
    angle = np.full(frames, rng.uniform(0, 2 * math.pi))
    opacity = np.ones(frames)
    radius = np.full(frames, r)
    cx = np.full(frames, rng.uniform(r, size - r))
    cy = np.full(frames, rng.uniform(r, size - r))
    if kind in ("horizontal", "vertical"):
        travel = m * (size - 2 * r)
        track = rng.uniform(r, size - r - travel) + travel * t
        if kind == "horizontal":
            cx = track
        else:
            cy = track
    elif kind == "scale":
        small = max(r * 0.35, 1.5)
        radius = small + m * (0.42 * size - small) * t
    elif kind == "fade":
        ramp = 1.0 - 0.6 * m                            # faster fades for larger m
        begin = rng.uniform(0.0, 1.0 - ramp)
        opacity = np.clip((t - begin) / ramp, 0.0, 1.0)
    elif kind == "rotation":
        angle = angle + m * math.pi * t                 # angle grows clockwise on screen (y points down)
    clip = np.empty((frames, size, size, 3), np.uint8)
    for k in range(frames):
        if flicker and k:                               # a new texture under the same colour and distractors
            frame = _background(size, rng, texture, base)
            for args in placed:
                _draw(frame, *args)
        else:
            frame = background.copy()
        _draw(frame, shape, cx[k], cy[k], radius[k], angle[k], colour, opacity[k])
        clip[k] = np.clip(frame + 0.5, 0, 255)
    where = np.stack([cx, cy], axis=1).astype(np.float64)
    where[opacity <= 0] = np.nan
    if label % 2:
        clip, where = clip[::-1].copy(), where[::-1].copy()
    return (clip, where) if centres else clip


def write_mp4(path: str, clip: np.ndarray, fps: int = 16, qp: int = 20) -> None:
    """Encode uint8 (T, H, W, 3) frames as intra-only H.264 (libx264, yuv420p, constant quantiser)."""
    height, width = clip.shape[1:3]
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={
            "qp": str(qp), "g": "1", "bframes": "0", "threads": "1", "preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame in clip:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def write_long_video(path: str, labels: list[int], seconds_each: float, size: int | tuple[int, int] = 64,
                     fps: int = 16, seed: int = 0, keyframe_every: int | None = None, qp: int = 23) -> float:
    """A long H.264 video of motion segments: segment k shows class `labels[k]` for `seconds_each` seconds.
    size: a side, or (width, height): the motion is drawn in a centred square of side min(width, height) on a
    flat grey frame. One segment is drawn at a time and encoded (memory does not grow with the length).
    keyframe_every: GOP length in frames (default: 2 s), so that reading a window seeks. Returns the duration
    in seconds."""
    width, height = (size, size) if isinstance(size, int) else size
    side = min(width, height)
    per = max(int(round(seconds_each * fps)), 1)
    x0, y0 = (width - side) // 2, (height - side) // 2
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={
            "qp": str(qp), "g": str(keyframe_every or 2 * fps), "bframes": "0", "threads": "1", "preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        canvas = np.full((height, width, 3), 128, np.uint8)
        for k, label in enumerate(labels):
            segment = render_clip(int(label), side, per, np.random.default_rng([seed, k]), distractors=0, texture=0.0)
            for frame in segment:
                canvas[y0:y0 + side, x0:x0 + side] = frame
                container.mux(stream.encode(av.VideoFrame.from_ndarray(canvas, format="rgb24")))
        container.mux(stream.encode())
    return len(labels) * per / fps


# ----------------------------------------------------------------------------------------------------
# drawing: shapes as signed distances (pixels, negative inside) turned into anti-aliased coverage

def _draw(image: np.ndarray, shape: str, cx: float, cy: float, r: float, angle: float, colour,
          opacity: float = 1.0) -> None:
    """Blend a shape into `image` (float (H, W, 3)) in place, touching only its bounding box."""
    if opacity <= 0:
        return
    height, width = image.shape[:2]
    reach = 1.5 * r + 1.0
    x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 1, width)
    y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 1, height)
    if x0 >= x1 or y0 >= y1:
        return
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] + (0.5 - cx)
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] + (0.5 - cy)
    alpha = _shape_alpha(shape, dx, dy, r, angle)[..., None] * opacity
    patch = image[y0:y1, x0:x1]
    patch *= 1.0 - alpha
    patch += alpha * np.asarray(colour, np.float32)


def _shape_alpha(shape: str, dx: np.ndarray, dy: np.ndarray, r: float, angle: float) -> np.ndarray:
    """Anti-aliased coverage of a shape centred at dx = dy = 0 with its own u axis along `angle`."""
    cos, sin = math.cos(angle), math.sin(angle)
    u, v = dx * cos + dy * sin, -dx * sin + dy * cos          # the shape's own axes, u along `angle`
    if shape == "disc":
        d = np.sqrt(u * u + v * v) - r
    elif shape == "square":
        d = np.maximum(np.abs(u), np.abs(v)) - r * 0.85
    elif shape == "triangle":
        d = np.maximum(np.maximum(-u, 0.5 * u + 0.866 * v), 0.5 * u - 0.866 * v) - r * 0.5
    elif shape == "pacman":
        rho = np.sqrt(u * u + v * v)
        phi = np.abs(np.arctan2(v, u))
        wedge = rho * np.sin(np.clip(phi - 0.6, -math.pi / 2, math.pi / 2))   # < 0 inside the mouth
        d = np.maximum(rho - r, -wedge)
    elif shape == "ell":
        bar = np.maximum(np.abs(u) - r, np.abs(v + 0.6 * r) - 0.4 * r)
        foot = np.maximum(np.abs(u + 0.6 * r) - 0.4 * r, np.abs(v) - r)
        d = np.minimum(bar, foot)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return np.clip(0.5 - d, 0.0, 1.0)


def _background(size: int, rng: np.random.Generator, texture: float, base: np.ndarray) -> np.ndarray:
    """A flat `base` colour (RGB) with a random smooth + fine texture of strength `texture` over it."""
    image = np.broadcast_to(base, (size, size, 3)).copy()
    if texture > 0:
        cells = int(rng.choice([4, 8, 16]))
        coarse = rng.normal(0, 1, (cells + 1, cells + 1, 3)).astype(np.float32)
        pos = np.linspace(0, cells, size, dtype=np.float32)
        i = np.minimum(pos.astype(int), cells - 1)
        f = (pos - i)[:, None]
        rows = coarse[i] * (1 - f[..., None]) + coarse[i + 1] * f[..., None]          # (size, cells+1, 3)
        smooth = rows[:, i] * (1 - f.T[..., None]) + rows[:, i + 1] * f.T[..., None]  # (size, size, 3)
        fine = rng.normal(0, 0.35, (size, size, 1)).astype(np.float32)
        image += texture * 45.0 * (smooth + fine)
    return image


def _contrasting_colour(background_mean: np.ndarray, min_contrast: float, rng: np.random.Generator) -> np.ndarray:
    best, best_d = None, -1.0
    for _ in range(32):
        colour = rng.uniform(0, 255, 3).astype(np.float32)
        d = float(np.linalg.norm(colour - background_mean))
        if d >= min_contrast:
            return colour
        if d > best_d:
            best, best_d = colour, d
    return best


def _check_pairs(pairs) -> None:
    if not pairs:
        raise UserError(f"no motion pairs given; choose one or more of {', '.join(MOTIONS)}")
    unknown = [p for p in pairs if p not in MOTIONS]
    if unknown:
        raise UserError(f"unknown motion pair(s) {unknown}; choose from {', '.join(MOTIONS)}")
    if len(set(pairs)) != len(pairs):
        raise UserError(f"motion pairs repeat: {list(pairs)}")


def _check_args(num_train, num_val, size, frames, pairs, motion, object_size, distractors, texture, qp) -> None:
    if num_train < 0 or num_val < 0 or num_train + num_val == 0:
        raise UserError(f"need a positive number of clips, got --train {num_train} --val {num_val}")
    if size < 16 or size % 2 or size > 1024:
        raise UserError(f"--size must be even and in 16..1024 (H.264 yuv420p; a CPU dataset), got {size}")
    if not 2 <= frames <= 1024:
        raise UserError(f"--frames must be in 2..1024 (at least 2 to show motion), got {frames}")
    _check_pairs(pairs)
    if not 0 < motion[0] <= motion[1] <= 1:
        raise UserError(f"motion range must satisfy 0 < low <= high <= 1, got {motion}")
    if not 0 < object_size[0] <= object_size[1] <= 0.45:
        raise UserError(f"object_size range must satisfy 0 < low <= high <= 0.45, got {object_size}")
    if not (0 <= distractors <= 64 and 0 <= texture < float("inf") and 0 <= qp <= 51):  # refuses nan too
        raise UserError(f"--distractors must be in 0..64, --texture a finite number >= 0 and qp in 0..51; got "
                        f"{distractors}, {texture}, {qp}")
