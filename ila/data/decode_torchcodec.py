"""Reading frames with torchcodec (`data.decoder=torchcodec`): the same interface as `ila.data.decode.VideoReader`.

torchcodec is an optional extra (`pip install ila[torchcodec]`) that needs the system's FFmpeg libraries (the major
versions torchcodec's README lists; Debian/Ubuntu: `apt-get install ffmpeg`, conda: `conda install -c conda-forge
ffmpeg`, macOS: `brew install ffmpeg`). `torchcodec_available()` says whether it can be used; `open_video`
falls back to PyAV with one warning when it cannot. Frame i is the i-th frame in presentation order (torchcodec's
exact seek mode), as for PyAV. `short_side` resizes in the decoder (FFmpeg's scaler, bilinear), like PyAV's
reader does during colour conversion.

`data.decoder=torchcodec-cuda` decodes on the GPU (`VideoDecoder(device="cuda:N")`, NVDEC) and `read` returns
CUDA tensors. torchcodec's decoder transforms run on the CPU only, so there the short side is resized on the GPU
(`resize_frames`: bilinear, antialiased, torchvision). CUDA cannot be used in forked loader workers, so CUDA
decoding runs in the training process (`data.workers=0`); `check_cuda_decoding` refuses it in one line where it
cannot run. NOT TESTED ON A GPU in the session that wrote it: the CPU-testable parts (refusals, `resize_frames`,
tensor frames through the dataset) are tested; `benchmarks/gpu_data.sh` has a row for a GPU session.

Both are entries of `ila.data.decode.DECODERS`, registered here (`open_torchcodec`, `open_torchcodec_cuda`); the
registry imports this module on its first look-up, and this module imports `ila.data.decode` (never the reverse).
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from torch.utils.data import get_worker_info
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from ila.data.decode import (CUDA_IN_WORKERS, DECODERS, Reader, VideoReadError, VideoReader, check_file,
                              checked_indices, scaled_size)
from ila.errors import UserError
import av

_AVAILABLE: tuple[bool, str] | None = None
_warned: set[str] = set()


def torchcodec_available() -> tuple[bool, str]:
    """(usable, why not): torchcodec imports and finds FFmpeg's libraries."""
    global _AVAILABLE
    if _AVAILABLE is None:
        try:
            from torchcodec.decoders import VideoDecoder  # noqa: F401
            _AVAILABLE = (True, "")
        except Exception as e:  # noqa: BLE001 - ImportError, or RuntimeError when FFmpeg's libraries are missing
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            _AVAILABLE = (False, f"torchcodec cannot be used ({first[:200]}); install it with "
                                 f"`pip install torchcodec` and FFmpeg's libraries (`apt-get install ffmpeg`)")
    return _AVAILABLE


def check_cuda_decoding() -> str:
    """The device torchcodec decodes on for `data.decoder=torchcodec-cuda` (`cuda:N`, the current device), or a
    one-line UserError saying what to set instead."""
    if get_worker_info() is not None:
        raise UserError(CUDA_IN_WORKERS)
    usable, why = torchcodec_available()
    if not usable:
        raise UserError(f"data.decoder=torchcodec-cuda: {why}; or set data.decoder=pyav")
    if not torch.cuda.is_available():
        raise UserError("data.decoder=torchcodec-cuda needs a CUDA GPU and none is visible here; set "
                        "data.decoder=torchcodec (CPU decoding) or data.decoder=pyav")
    return f"cuda:{torch.cuda.current_device()}"


def resize_frames(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 frames (N, H, W, 3) resized to `size` = (width, height) where they are (bilinear, antialiased):
    the decoder-side resize for devices whose decoder cannot resize (torchcodec's transforms are CPU-only)."""
    chw = F.resize(frames.permute(0, 3, 1, 2), [size[1], size[0]], interpolation=InterpolationMode.BILINEAR,
                   antialias=True)
    return chw.permute(0, 2, 3, 1)


@DECODERS.register("torchcodec", description="torchcodec on the CPU (optional extra; PyAV after one warning where "
                                               "it cannot be used)")
def open_torchcodec(path: str, threads: int = 1, short_side: int | None = None):
    """The `torchcodec` decoder: a `TorchCodecReader` on the CPU, or PyAV's `VideoReader` (one warning per reason)
    where torchcodec cannot be used."""
    usable, why = torchcodec_available()
    if usable:
        return TorchCodecReader(path, threads=threads, short_side=short_side)
    if why not in _warned:
        _warned.add(why)
        warnings.warn(f"{why}; decoding with PyAV", stacklevel=3)
    return VideoReader(path, threads=threads)


@DECODERS.register("torchcodec-cuda", description="torchcodec on the current CUDA GPU (NVDEC; frames stay there, "
                                                    "data.workers=0)", device="cuda")
def open_torchcodec_cuda(path: str, threads: int = 1, short_side: int | None = None):
    """The `torchcodec-cuda` decoder: a `TorchCodecReader` on the current CUDA device (`check_cuda_decoding`
    refuses in one line where it cannot run)."""
    return TorchCodecReader(path, threads=threads, device=check_cuda_decoding(), short_side=short_side)


class TorchCodecReader(Reader):
    """Random access to the frames of one video file through torchcodec."""

    def __init__(self, path: str, threads: int = 1, device: str = "cpu", short_side: int | None = None):
        """`short_side`: the size `read` will be asked for, so the one decoder (its set-up scans the file) resizes
        to it; another size opens a second decoder. `device`: "cpu" (numpy frames), or a CUDA device (frames
        stay CUDA tensors, resized there by `resize_frames`)."""
        self.path, self.threads, self.device = path, threads, str(device)
        self._on_cpu = self.device == "cpu"
        check_file(path)
        self._decoders: dict = {}
        self._size = _header_size(path) if short_side else None
        decoder = self._decoder(self._target(short_side) if self._on_cpu else None)
        meta = decoder.metadata
        self._size = (meta.width, meta.height) if self._size is None else self._size
        self._num_frames = len(decoder)
        if not self._num_frames:
            raise VideoReadError(path, "video stream has no frames")
        self.fps = float(meta.average_fps or 0.0)

    def _decoder(self, size: tuple[int, int] | None):
        if size not in self._decoders:
            from torchcodec.decoders import VideoDecoder
            from torchcodec.transforms import Resize

            try:
                self._decoders[size] = VideoDecoder(self.path, seek_mode="exact", dimension_order="NHWC",
                                                    num_ffmpeg_threads=self.threads, device=self.device,
                                                    transforms=[Resize((size[1], size[0]))] if size else None)
            except (RuntimeError, ValueError) as e:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
                if not self._on_cpu and any(w in first.lower() for w in ("cuda", "nvdec", "device", "gpu")):
                    # the set-up, not the file: a torchcodec build without CUDA, no NVDEC, ... (not a skippable file)
                    raise UserError(f"torchcodec cannot decode on {self.device} ({first}); install a CUDA build of "
                                    f"torchcodec or set data.decoder=torchcodec") from None
                raise VideoReadError(self.path, f"not a readable video ({first[:120]})") from None
        return self._decoders[size]

    @property
    def num_frames(self) -> int:
        return self._num_frames

    def read(self, indices, short_side: int | None = None) -> np.ndarray:
        """Frames at `indices` as uint8 (N, H, W, 3); `short_side` as for `VideoReader.read`."""
        indices = checked_indices(self.path, indices, self.num_frames)
        size = self._target(short_side)
        try:
            decoder = self._decoder(size if self._on_cpu else None)
            frames = decoder.get_frames_at(indices).data
        except (RuntimeError, ValueError, IndexError) as e:
            raise VideoReadError(self.path, f"decoding failed ({str(e).splitlines()[0][:120]})") from None
        if self._on_cpu:
            return frames.numpy()
        _warn_cpu_fallback(decoder)
        return resize_frames(frames, size) if size else frames

    def _target(self, short_side: int | None) -> tuple[int, int] | None:
        """(width, height) with the short side `short_side` (None: the stream's size)."""
        if not short_side or self._size is None:
            return None
        size = scaled_size(*self._size, short_side)
        return None if size == tuple(self._size) else size

    def close(self) -> None:
        self._decoders.clear()


_FALLBACK_WARNED = False


def _warn_cpu_fallback(decoder) -> None:
    """One warning when torchcodec decoded on the CPU although a CUDA device was asked for (its `cpu_fallback`,
    e.g. a codec NVDEC does not support): the frames are right, the speed is not."""
    global _FALLBACK_WARNED
    if not _FALLBACK_WARNED and bool(getattr(decoder, "cpu_fallback", False)):
        _FALLBACK_WARNED = True
        warnings.warn(f"torchcodec fell back to CPU decoding ({decoder.cpu_fallback}); data.decoder=torchcodec-cuda "
                      f"is not decoding on the GPU", stacklevel=3)


def _header_size(path: str) -> tuple[int, int] | None:
    """The video stream's (width, height) from the container header (PyAV, no decoding); None if unknown."""
    try:
        with av.open(path, metadata_errors="ignore") as container:
            if not container.streams.video:
                return None
            ctx = container.streams.video[0].codec_context
            return (ctx.width, ctx.height) if ctx.width and ctx.height else None
    except (av.error.FFmpegError, OSError, UnicodeDecodeError):
        return None
