"""Which frames make a clip: segment and dense sampling, deterministic multi-view test clips, and the
random generator of one item derived from (seed, epoch, index).

All functions return int64 frame indices in [0, num_frames). Training draws from the given generator;
test-time sampling uses no randomness at all.
"""
from __future__ import annotations

import numpy as np

MODES = ("segment", "dense")


def item_rng(seed: int, epoch: int, index: int, attempt: int = 0) -> np.random.Generator:
    """The generator for one item: the same (seed, epoch, index, attempt) gives the same draws in any
    process, whatever the worker count or order."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), int(index), int(attempt)])


def segment_indices(num_frames: int, num_segments: int, train: bool, rng: np.random.Generator | None = None,
                    view: int = 0, num_views: int = 1) -> np.ndarray:
    """Split the video into `num_segments` equal segments and take one frame in each: a random one in
    training, otherwise the one at offset (view + 0.5) / num_views of the segment (its middle for a
    single view). Videos shorter than `num_segments` frames repeat frames."""
    _check(num_frames, num_segments)
    length = num_frames / num_segments
    if train:
        offsets = rng.random(num_segments)
    else:
        offsets = np.full(num_segments, (view + 0.5) / num_views)
    indices = np.floor((np.arange(num_segments) + offsets) * length).astype(np.int64)
    return np.minimum(indices, num_frames - 1)


def dense_indices(num_frames: int, clip_len: int, interval: int, train: bool,
                  rng: np.random.Generator | None = None, view: int = 0, num_views: int = 1) -> np.ndarray:
    """`clip_len` frames `interval` apart. Training starts at a random frame; test views start evenly
    spread, view k at (k + 0.5) / num_views of the free range (the centre for a single view). Frames
    past the end repeat the last frame."""
    _check(num_frames, clip_len)
    if interval < 1:
        raise ValueError(f"frame interval must be >= 1, got {interval}")
    span = (clip_len - 1) * interval + 1
    free = max(num_frames - span, 0)
    if train:
        start = int(rng.integers(0, free + 1))
    else:
        start = int(free * (view + 0.5) / num_views)
    indices = start + np.arange(clip_len, dtype=np.int64) * interval
    return np.minimum(indices, num_frames - 1)


def sample_indices(num_frames: int, num_clip_frames: int, mode: str = "segment", train: bool = True,
                   rng: np.random.Generator | None = None, interval: int = 4, view: int = 0,
                   num_views: int = 1) -> np.ndarray:
    """Dispatch to `segment_indices` or `dense_indices`."""
    if train and rng is None:
        raise ValueError("training sampling needs a random generator")
    if mode == "segment":
        return segment_indices(num_frames, num_clip_frames, train, rng, view, num_views)
    if mode == "dense":
        return dense_indices(num_frames, num_clip_frames, interval, train, rng, view, num_views)
    raise ValueError(f"unknown sampling mode {mode!r}; expected one of {', '.join(MODES)}")


def test_views(num_frames: int, num_clip_frames: int, num_views: int, mode: str = "segment",
               interval: int = 4) -> np.ndarray:
    """All test clips of a video, shape (num_views, num_clip_frames), spread deterministically."""
    return np.stack([sample_indices(num_frames, num_clip_frames, mode, False, None, interval, v, num_views)
                     for v in range(num_views)])


def _check(num_frames: int, count: int) -> None:
    if num_frames < 1:
        raise ValueError(f"cannot sample from a video with {num_frames} frames")
    if count < 1:
        raise ValueError(f"clip length must be >= 1, got {count}")


test_views.__test__ = False  # not a pytest test despite its name
