"""Reading frames with torchcodec (`data.decoder=torchcodec`): the same interface as `ila.data.decode.VideoReader`.

torchcodec is an optional extra (`pip install ila[torchcodec]`) that needs the system's FFmpeg libraries (4-7;
Debian/Ubuntu: `apt-get install ffmpeg`). `torchcodec_available()` says whether it can be used; `open_video`
falls back to PyAV with one warning when it cannot. Frame i is the i-th frame in presentation order (torchcodec's
exact seek mode), as for PyAV. `short_side` resizes in the decoder (FFmpeg's scaler, bilinear), like PyAV's
reader does during colour conversion.
"""
from __future__ import annotations

import numpy as np

from ila.data.decode import VideoReadError, check_file, checked_indices, scaled_size

_AVAILABLE: tuple[bool, str] | None = None


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


class TorchCodecReader:
    """Random access to the frames of one video file through torchcodec."""

    def __init__(self, path: str, threads: int = 1, device: str = "cpu", short_side: int | None = None):
        """`short_side`: the size `read` will be asked for, so the one decoder (its set-up scans the file) resizes
        to it; another size opens a second decoder."""
        self.path, self.threads, self.device = path, threads, device
        check_file(path)
        self._decoders: dict = {}
        self._size = _header_size(path) if short_side else None
        decoder = self._decoder(self._target(short_side))
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
                raise VideoReadError(self.path, f"not a readable video ({str(e).splitlines()[0][:120]})") from None
        return self._decoders[size]

    @property
    def num_frames(self) -> int:
        return self._num_frames

    def read(self, indices, short_side: int | None = None) -> np.ndarray:
        """Frames at `indices` as uint8 (N, H, W, 3); `short_side` as for `VideoReader.read`."""
        indices = checked_indices(self.path, indices, self.num_frames)
        try:
            frames = self._decoder(self._target(short_side)).get_frames_at(indices).data
        except (RuntimeError, ValueError, IndexError) as e:
            raise VideoReadError(self.path, f"decoding failed ({str(e).splitlines()[0][:120]})") from None
        return frames.cpu().numpy()

    def _target(self, short_side: int | None) -> tuple[int, int] | None:
        """(width, height) with the short side `short_side` (None: the stream's size)."""
        if not short_side or self._size is None:
            return None
        size = scaled_size(*self._size, short_side)
        return None if size == tuple(self._size) else size

    def close(self) -> None:
        self._decoders.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _header_size(path: str) -> tuple[int, int] | None:
    """The video stream's (width, height) from the container header (PyAV, no decoding); None if unknown."""
    import av

    try:
        with av.open(path, metadata_errors="ignore") as container:
            if not container.streams.video:
                return None
            ctx = container.streams.video[0].codec_context
            return (ctx.width, ctx.height) if ctx.width and ctx.height else None
    except (av.error.FFmpegError, OSError, UnicodeDecodeError):
        return None
