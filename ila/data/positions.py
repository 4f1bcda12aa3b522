"""Object positions of a generated set: each frame's object centre, and where it lands in a model's test views.

`ila.data.synthetic.make_dataset` writes `positions.json` beside its lists (readers of the set ignore it):

    {"format": "ila-object-centres/1", "size": [W, H],
     "videos": {"val/000000.mp4": [[x, y], ..., null, ...], ...}}

one `[x, y]` per frame of the video, in pixels of the video as written (pixel i spans [i, i + 1]), `null` where
the object is invisible; keys are the video paths relative to the file's folder. `view_centres` maps a video's
centres through the test sampling and transform (`test_views`, `TestTransform`'s resize and crops) to pixels of
each view the model sees; `ila.engine.tracking` compares them with the interactive points (`point_error`).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ila import jsonsafe
from ila.data.decode import scaled_size
from ila.data.sampling import test_views
from ila.data.transforms import resize_short_side
from ila.errors import UserError

POSITIONS_FILE = "positions.json"
FORMAT = "ila-object-centres/1"


def positions_json(centres: dict[str, np.ndarray], size: tuple[int, int]) -> str:
    """The text of a positions file: `centres` maps a video path (relative to the file's folder) to its
    centres, float (frames, 2) as (x, y) pixels with NaN for an invisible object; `size` is (W, H)."""
    videos = {rel: [None if not np.isfinite(xy).all() else [round(float(xy[0]), 3), round(float(xy[1]), 3)]
                    for xy in where] for rel, where in centres.items()}
    return json.dumps({"format": FORMAT, "size": [int(size[0]), int(size[1])], "videos": videos},
                      separators=(",", ":")) + "\n"


@dataclass(frozen=True)
class Positions:
    """A read positions file: its folder, the videos' size (W, H) and each video's centres (frames, 2)."""

    folder: Path
    size: tuple[int, int]
    videos: dict[str, np.ndarray]

    def centres(self, path: str) -> np.ndarray | None:
        """The centres `(frames, 2)` of the video at `path` (a sample path: absolute, or relative to the
        current folder or to the positions file's), None when the file has none for it."""
        found = self.videos.get(Path(path).as_posix())
        if found is None:
            rel = os.path.relpath(os.path.abspath(path), os.path.abspath(self.folder))
            found = self.videos.get(Path(rel).as_posix())
        return found


def find_positions(*places: str | Path | None) -> Path | None:
    """The positions file beside an annotation list or in a data folder: the first of `places` (files stand for
    their folder) that holds one, else None."""
    for place in places:
        if not place:
            continue
        folder = Path(place) if Path(place).is_dir() else Path(place).parent
        if (folder / POSITIONS_FILE).is_file():
            return folder / POSITIONS_FILE
    return None


def _bad(path: Path, what: str) -> UserError:
    return UserError(f"{path} is not a positions file ({what}); remove it or make the set again with "
                     f"ila make-dataset")


def read_positions(path: str | Path, others: bool = False) -> Positions | None:
    """Read and check a positions file; a one-line UserError for a damaged one. `others=True`: None for a JSON
    file of another format (a data set's own `positions.json` that ila did not write)."""
    path = Path(path)
    try:
        data = jsonsafe.loads(path.read_bytes(), path)
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        if others:
            return None
        raise _bad(path, f"its format is not {FORMAT}")
    size, videos = data.get("size"), data.get("videos")
    if (not isinstance(size, list) or len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool)
                                                                   and v > 0 for v in size)):
        raise _bad(path, "size must be [width, height] in pixels")
    if not isinstance(videos, dict):
        raise _bad(path, "videos must map video paths to centres")
    out = {}
    for rel, where in videos.items():
        if not isinstance(where, list) or not where or not all(
                xy is None or (isinstance(xy, list) and len(xy) == 2 and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in xy))
                for xy in where):
            raise _bad(path, f"the centres of {rel!r} must be a list of [x, y] or null per frame")
        out[rel] = np.array([[math.nan, math.nan] if xy is None else xy for xy in where], dtype=np.float64)
    return Positions(path.parent, (size[0], size[1]), out)


def view_centres(centres: np.ndarray, size: tuple[int, int], num_frames: int, input_size: int, clips: int = 1,
                 crops: int = 1, sampling: str = "segment", interval: int = 4) -> np.ndarray:
    """A video's object centres `(F, 2)` (pixels of the (W, H) video; F its frame count) -> the centres in each
    test view the model sees, `(V, T, 2)` in pixels of the `input_size` view (V = clips x crops, clip-major, as
    `VideoDataset`): the frames `test_views` samples, then `TestTransform`'s short-side resize and crop(s)."""
    width, height = size
    frames = test_views(len(centres), num_frames, clips, sampling, interval)           # (clips, T)
    short = resize_short_side(input_size) if crops == 1 else input_size
    new_w, new_h = scaled_size(width, height, short)
    scaled = centres[frames] * np.array([new_w / width, new_h / height])               # (clips, T, 2)
    if crops == 1:                                        # torchvision's center_crop
        boxes = [(round((new_w - input_size) / 2.0), round((new_h - input_size) / 2.0))]
    elif new_w >= new_h:
        boxes = [(x, 0) for x in (0, (new_w - input_size) // 2, new_w - input_size)]
    else:
        boxes = [(0, y) for y in (0, (new_h - input_size) // 2, new_h - input_size)]
    offsets = np.array(boxes, dtype=np.float64)                                         # (crops, 2) as (left, top)
    views = scaled[:, None] - offsets[None, :, None]                                   # (clips, crops, T, 2)
    return views.reshape(-1, num_frames, 2)
