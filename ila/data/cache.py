"""`data.cache=memory`: every video decoded once, its frames kept in memory, clips served from there.

`MemoryVideoDataset` is a `VideoDataset` whose reader is the decoded frames of the video instead of the
file, so frame sampling, transforms, bad-file policy and the per-item random draws are exactly those of
the decoding dataset (same seed, same clips, bit for bit). Frames are kept as uint8 (F, H, W, 3) at the
transform's decode size (`short_side`), decoded in the main process when the dataset is built (so loader
workers share them) and kept for the whole process: a validation set built every epoch is decoded once.

Memory: F x H x W x 3 bytes per video (the demo's 2,880 videos of 16 frames at 36 px: 179 MB); meant for
small sets on machines where decoding costs more than the model.
"""
from __future__ import annotations

import os
import time

import numpy as np

from ila.data.dataset import VideoDataset
from ila.data.decode import VideoReadError, decodes_on_gpu, open_video
from ila.errors import UserError

# (path, size, mtime_ns, short_side) -> uint8 (F, H, W, 3) or the reason the file cannot be read
_DECODED: dict[tuple, np.ndarray | str] = {}


class FramesReader:
    """The reader interface of `ila.data.decode` over frames already in memory."""

    def __init__(self, path: str, frames: np.ndarray):
        self.path, self.frames = path, frames

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    def read(self, indices, short_side: int | None = None) -> np.ndarray:
        """Frames at `indices` as uint8 (N, H, W, 3) (`short_side` was applied when they were decoded)."""
        indices = np.asarray([int(i) for i in indices], dtype=np.int64)
        if indices.size == 0:
            raise ValueError("no frame indices given")
        if indices.min() < 0 or indices.max() >= len(self.frames):
            raise IndexError(f"{self.path}: frame {int(indices.max())} out of range 0..{len(self.frames) - 1}")
        return self.frames[indices]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _key(path: str, short_side: int | None, decoder: str = "pyav") -> tuple:
    try:
        st = os.stat(path)
        return (path, st.st_size, st.st_mtime_ns, short_side, decoder)
    except OSError:
        return (path, None, None, short_side, decoder)


def decode_all(path: str, short_side: int | None, decoder: str = "pyav", threads: int = 1) -> np.ndarray | str:
    """Every frame of a video as uint8 (F, H, W, 3), or why it cannot be read; kept for the process (the thread
    count is not in the key: the frames are the same whatever it is)."""
    key = _key(path, short_side, decoder)
    if key not in _DECODED:
        try:
            with open_video(path, threads=threads, decoder=decoder, short_side=short_side) as reader:
                _DECODED[key] = reader.read(range(reader.num_frames), short_side=short_side)
        except VideoReadError as e:
            _DECODED[key] = e.reason or "unreadable"
    return _DECODED[key]


class MemoryVideoDataset(VideoDataset):
    """A `VideoDataset` (same arguments) whose videos are decoded once, when it is built."""

    def __init__(self, *args, verbose: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        if decodes_on_gpu(self.decoder):
            raise UserError("data.cache=memory keeps decoded frames in CPU memory; set data.decoder=torchcodec "
                            "or pyav with it (or data.cache=none to decode on the GPU)")
        start = time.perf_counter()
        new = sum(_key(self.resolve(s.path), self.short_side, self.decoder) not in _DECODED for s in self.samples)
        self._frames: dict[str, np.ndarray | str] = {}
        for s in self.samples:
            path = self.resolve(s.path)
            if path not in self._frames:
                self._frames[path] = decode_all(path, self.short_side, self.decoder, self.decoder_threads)
        if verbose and new:
            size = sum(f.nbytes for f in self._frames.values() if isinstance(f, np.ndarray))
            print(f"data.cache=memory: decoded {new} videos ({size / 2**20:.0f} MiB) in "
                  f"{time.perf_counter() - start:.1f} s")

    def open(self, path: str):
        frames = self._frames.get(path)
        if frames is None:
            frames = decode_all(path, self.short_side, self.decoder, self.decoder_threads)
        if isinstance(frames, str):
            raise VideoReadError(path, frames)
        return FramesReader(path, frames)
