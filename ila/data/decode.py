"""Reading frames: PyAV video decoding that seeks, and frame folders (JPEG/PNG).

`open_video(path)` gives a reader with `num_frames` and `read(indices) -> uint8 array (N, H, W, 3)`.
A video is indexed by demuxing its packets (no decoding): frame i is the i-th frame in presentation
order, which is exact for variable frame rates. `read` seeks to the keyframe before the first wanted
frame, decodes forward (skipping unwanted frames that no other frame references), converts only the
wanted frames to RGB, stops after the last one, and seeks again whenever a keyframe lies between two
wanted frames. Rotation metadata is applied. `frame_times()` gives when each frame is shown, from the packets'
timestamps read at indexing (a declared frame rate or duration that they contradict is not used). Any file that
cannot give frames raises `VideoReadError` (a `UserError`) naming the path and the reason. A frame folder's image
larger than `MAX_FRAME_PIXELS` (by its header) is refused before it is decoded. `threads`
(`data.decoder_threads`) sets FFmpeg's decoder threads (frame + slice threading; 0: FFmpeg's choice); the frames
are the same at any count, and one thread gives the most frames per CPU-second (benchmarks/decoder_threads.py).
"""
from __future__ import annotations

import os
import re
import warnings
from bisect import bisect_right
from typing import NamedTuple

import av
import numpy as np

from ila.errors import UserError
from ila.registry import Registry
from av.video.reformatter import VideoReformatter
from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# the largest frame-folder image read (8192 x 8192; an 8K frame is 7680 x 4320): a larger one is refused from its
# header, before any pixel is allocated (PIL's own decompression-bomb limit, when lower, refuses earlier)
MAX_FRAME_PIXELS = 8192 * 8192


class VideoReadError(UserError):
    """A video or frame folder that gives no usable frames; the message names the path and why."""

    def __init__(self, path: str, reason: str | None = None):
        # one argument (a whole message) too, as DataLoader workers re-raise with the message only
        super().__init__(path if reason is None else f"{path}: {reason}")
        self.path = path
        self.reason = reason if reason is not None else path


# data.decoder's values: each opener registered where it is written; the torchcodec ones by
# ila.data.decode_torchcodec, loaded on the first look-up (it imports this module, not the other way round)
DECODERS = Registry("decoder", key="data.decoder", builtin=("ila.data.decode_torchcodec",))
# the one line for GPU decoding asked of a loader worker (build_loader refuses workers, a worker refuses to decode)
CUDA_IN_WORKERS = ("data.decoder=torchcodec-cuda decodes in the training process (CUDA cannot be used in forked "
                   "loader workers); set data.workers=0")
MAX_THREADS = 64


def check_threads(threads) -> int:
    """`threads` as a decoder thread count: 1 single-threaded, N threads, 0 FFmpeg's choice (else UserError)."""
    if isinstance(threads, bool) or not isinstance(threads, int) or not 0 <= threads <= MAX_THREADS:
        raise UserError(f"data.decoder_threads={threads!r} is not allowed; use an integer in [0, {MAX_THREADS}] "
                        f"(1: one thread per decoder, best with many loader workers; 0: FFmpeg picks)")
    return threads


def open_video(path: str, threads: int = 1, decoder: str = "pyav", short_side: int | None = None):
    """A reader for a video file or, for a directory, a frame folder. `decoder`: a registered decoder (`DECODERS`):
    "pyav"; "torchcodec" reads video files with torchcodec where it can be used, else (after one warning) with
    PyAV; `short_side`, the size reads will ask for, lets torchcodec set up one decoder that resizes.
    "torchcodec-cuda" decodes on the current CUDA device (NVDEC) and reads give CUDA tensors; it raises instead of
    falling back (`check_cuda_decoding`). A decoder's entry is called as `opener(path, threads=, short_side=)`.
    `threads`: decoder threads (`check_threads`); the frames are the same whatever the count."""
    threads = check_threads(threads)
    opener = DECODERS.get(decoder).obj
    if os.path.isdir(path):
        return FrameFolderReader(path)
    return opener(path, threads=threads, short_side=short_side)


def decodes_on_gpu(decoder: str) -> bool:
    """Whether the registered `decoder` gives frames on a CUDA device (its entry says `device="cuda"`)."""
    return decoder in DECODERS and DECODERS.get(decoder).info.get("device") == "cuda"


def check_file(path: str) -> None:
    """A VideoReadError when `path` cannot hold a video: missing, a directory, or empty."""
    if not os.path.exists(path):
        raise VideoReadError(path, "file not found")
    if os.path.isdir(path):
        raise VideoReadError(path, "is a directory, not a video file")
    if os.path.getsize(path) == 0:
        raise VideoReadError(path, "empty file (0 bytes)")


class FrameTimes(NamedTuple):
    """When the frames of a video are shown: `times`, seconds from the first frame, one per frame in presentation
    order (non-decreasing); `duration`, seconds: the last frame's time plus the interval before it; `source`:
    "timestamps" (the packets' pts x time base) or "frame rate" (a stream without timestamps, one rate)."""

    times: np.ndarray
    duration: float
    source: str


def checked_indices(path: str, indices, num_frames: int) -> list[int]:
    """`indices` as ints, each in 0..num_frames-1 (else ValueError / IndexError)."""
    indices = [int(i) for i in indices]
    if not indices:
        raise ValueError("no frame indices given")
    bad = [i for i in indices if not 0 <= i < num_frames]
    if bad:
        raise IndexError(f"{path}: frame {bad[0]} out of range 0..{num_frames - 1}")
    return indices


def scaled_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """(width, height) scaled so the shorter side is `short_side` (unchanged when None or already so)."""
    if not short_side or short_side == min(width, height):
        return width, height
    scale = short_side / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


class Reader:
    """What every decoder's reader is (`open_video` returns one): `num_frames`, `read(indices, short_side)` and a
    context manager that closes it."""

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class VideoReader(Reader):
    """Random access to the frames of one video file (use as a context manager, or call `close`)."""

    def __init__(self, path: str, threads: int = 1):
        self.path = path
        self._reformatter = None
        check_file(path)
        try:
            self._container = av.open(local_name(path), metadata_errors="ignore")
        except av.error.EOFError:
            raise VideoReadError(path, "no frames: the file ends before any video data") from None
        except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
            raise VideoReadError(path, f"not a readable video ({_why(e)})") from None
        try:
            if not self._container.streams.video:
                kinds = sorted({s.type for s in self._container.streams})
                what = f"{', '.join(kinds)} streams only" if kinds else "no streams or frames at all"
                raise VideoReadError(path, f"no video stream ({what})")
            self._threads = threads
            self._stream = self._video_stream()
            self._size = (self._stream.codec_context.width, self._stream.codec_context.height)
            self._index_packets()
        except BaseException:
            self._container.close()
            raise

    def _video_stream(self):
        """The first video stream, set up for `self._threads` decoder threads. Threads other than one use
        FFmpeg's frame and slice threading (PyAV's default, slice only, gives nothing on x264's one-slice frames)."""
        stream = self._container.streams.video[0]
        stream.thread_count = self._threads
        if self._threads != 1:
            stream.thread_type = "AUTO"
        return stream

    def _index_packets(self) -> None:
        pts, keys, durations, timestamps = [], [], [], True
        try:
            for packet in self._container.demux(self._stream):
                if packet.size == 0:
                    continue
                t = packet.pts if packet.pts is not None else packet.dts
                timestamps &= t is not None
                pts.append(t if t is not None else len(pts))
                keys.append(bool(packet.is_keyframe))
                durations.append(packet.duration or 0)
        except av.error.EOFError:
            pass                                      # a stream that ends early: keep what was read
        except av.error.FFmpegError as e:
            if not pts:
                raise VideoReadError(self.path, f"not a readable video ({_why(e)})") from None
        if not pts:
            raise VideoReadError(self.path, "video stream has no frames")
        order = np.argsort(np.asarray(pts), kind="stable")
        self._pts = [pts[i] for i in order]
        self._keyframes = [i for i, j in enumerate(order) if keys[j]] or [0]
        self._frame_of_pts = {p: i for i, p in enumerate(self._pts)}
        self._seekable = timestamps and len(self._frame_of_pts) == len(self._pts)
        self._has_timestamps, self._durations = timestamps, durations

    @property
    def num_frames(self) -> int:
        return len(self._pts)

    @property
    def fps(self) -> float:
        rate = self._stream.average_rate or self._stream.guessed_rate
        return float(rate) if rate else 0.0

    def frame_times(self) -> FrameTimes:
        """When each frame is shown (`FrameTimes`), from the timestamps read at indexing (no decoding): frame i at
        (pts_i - pts_0) x time base; the last frame lasts as long as the interval before it. The declared frame
        rate and duration are not used where timestamps exist (a variable frame rate, or a header that says
        1e-6 fps, cannot skew them). A stream without usable timestamps (none, or all equal) is timed by its one
        frame rate (equal packet durations, else the declared rate) where that agrees with its declared
        duration; otherwise a `VideoReadError` says why."""
        n, base = self.num_frames, self._stream.time_base
        if self._has_timestamps and base and base > 0:
            rel = np.asarray(self._pts, dtype=np.float64) - float(self._pts[0])
            times = rel * base.numerator / base.denominator if base.numerator != 1 else rel / base.denominator
            steps = np.diff(times)
            steps = steps[steps > 0]
            if len(steps):
                return FrameTimes(times, float(times[-1] + steps[-1]), "timestamps")
        rate = self._one_rate()
        declared = self._declared_duration() if n > 1 else None
        if declared and abs(n / rate - declared) > max(0.1 * declared, 1.5 / rate):
            raise VideoReadError(self.path, f"no usable frame timestamps, and its frame rate ({rate:.4g} fps: {n} "
                                            f"frames in {n / rate:.4g} s) contradicts its declared duration "
                                            f"({declared:.4g} s), so its frames cannot be placed in time; re-encode "
                                            f"it with timestamps (e.g. ffmpeg -i IN -c:v libx264 OUT.mp4)")
        return FrameTimes(np.arange(n, dtype=np.float64) / rate, n / rate, "frame rate")

    def _one_rate(self) -> float:
        """The stream's one frame rate: equal packet durations, else the declared rate (VideoReadError: none)."""
        base, durations = self._stream.time_base, set(self._durations)
        if len(durations) == 1 and base and base > 0 and min(durations) > 0:
            rate = 1 / float(min(durations) * base)
        else:
            rate = self.fps
        if not (np.isfinite(rate) and rate > 0):
            raise VideoReadError(self.path, "no usable frame timestamps and no frame rate, so its frames cannot be "
                                            "placed in time; re-encode it (e.g. ffmpeg -i IN -c:v libx264 OUT.mp4)")
        return rate

    def _declared_duration(self) -> float | None:
        """The duration the file declares (its stream's, else its container's), seconds; None when it has none."""
        stream, base = self._stream, self._stream.time_base
        if stream.duration and base and stream.duration > 0:
            return float(stream.duration * base)
        if self._container.duration and self._container.duration > 0:
            return self._container.duration / av.time_base
        return None

    def read(self, indices, short_side: int | None = None) -> np.ndarray:
        """Frames at `indices` (any order, repeats allowed) as uint8 (N, H, W, 3), rotation applied;
        `short_side` resizes during colour conversion so the shorter side has that length."""
        indices = checked_indices(self.path, indices, self.num_frames)
        wanted = sorted(set(indices))
        got: dict[int, np.ndarray] = {}
        try:
            if self._seekable:
                for span in self._spans(wanted):
                    self._decode_span(span, got, short_side)
            else:
                self._decode_from_start(wanted, got, short_side)
        except (av.error.FFmpegError, OSError, ValueError) as e:
            raise VideoReadError(self.path, f"decoding failed ({_why(e)})") from None
        missing = [i for i in wanted if i not in got]
        if missing:
            raise VideoReadError(self.path, f"truncated or corrupt: frame {missing[0]} of {self.num_frames} "
                                            f"could not be decoded ({len(missing)} of {len(wanted)} wanted missing)")
        return np.stack([got[i] for i in indices])

    def _spans(self, wanted: list[int]) -> list[list[int]]:
        """Group wanted frames: a new group (a new seek) starts where a keyframe lies after the previous
        wanted frame, so the frames in between are never decoded."""
        spans = [[wanted[0]]]
        for i in wanted[1:]:
            if self._keyframe_before(i) > spans[-1][-1]:
                spans.append([i])
            else:
                spans[-1].append(i)
        return spans

    def _keyframe_before(self, i: int) -> int:
        return self._keyframes[max(bisect_right(self._keyframes, i) - 1, 0)]

    def _decode_span(self, span: list[int], got: dict, short_side: int | None) -> None:
        start = self._keyframe_before(span[0])
        try:
            self._container.seek(int(self._pts[start]), stream=self._stream, backward=True, any_frame=False)
        except av.error.FFmpegError:
            self._decode_from_start(span, got, short_side)
            return
        wanted, last = set(span), span[-1]
        for frame in self._frames(wanted):
            i = self._frame_of_pts.get(frame.pts)
            if i is None:
                continue
            if i in wanted and i not in got:
                got[i] = self._to_rgb(frame, short_side)
            if i >= last:
                return

    def _decode_from_start(self, wanted: list[int], got: dict, short_side: int | None) -> None:
        """For streams without usable timestamps: count frames from the beginning."""
        self._container.close()
        self._container = av.open(local_name(self.path), metadata_errors="ignore")
        self._stream = self._video_stream()
        targets, last = set(wanted), wanted[-1]
        for i, frame in enumerate(self._frames()):
            if i in targets and i not in got:
                got[i] = self._to_rgb(frame, short_side)
            if i >= last:
                return

    def _frames(self, wanted: set[int] | None = None):
        """Decoded frames from the current position; a corrupt packet is skipped, not fatal. With
        `wanted`, frames that nothing references (B-frames, mostly) are not decoded unless wanted."""
        context = self._stream.codec_context
        for packet in self._container.demux(self._stream):
            if wanted is not None:
                skip = self._frame_of_pts.get(packet.pts) not in wanted
                context.skip_frame = "NONREF" if skip else "DEFAULT"
            try:
                yield from packet.decode()
            except av.error.FFmpegError:
                continue

    def _to_rgb(self, frame: av.VideoFrame, short_side: int | None) -> np.ndarray:
        """RGB at the stream's size (so a mid-stream size change cannot give mixed sizes), rotated."""
        if self._reformatter is None:   # one scaler for the reader: FFmpeg's set-up is not repeated per frame
            self._reformatter = VideoReformatter()
        return frame_to_rgb(frame, self._size, short_side, self._reformatter)

    def close(self) -> None:
        self._container.close()


@DECODERS.register("pyav", description="PyAV (FFmpeg) on the CPU, seeking to keyframes")
def open_pyav(path: str, threads: int = 1, short_side: int | None = None) -> VideoReader:
    """The `pyav` decoder: a `VideoReader` (it resizes per read, so `short_side` is not needed up front)."""
    return VideoReader(path, threads=threads)


def frame_to_rgb(frame: av.VideoFrame, size: tuple[int, int], short_side: int | None,
                 reformatter: VideoReformatter) -> np.ndarray:
    """One decoded frame as uint8 RGB `(H, W, 3)`: `size` (width, height; the stream's, so a mid-stream size change
    cannot give mixed sizes; the frame's own where it is unknown) scaled so the shorter side is `short_side`
    (bilinear, during the colour conversion), rotation metadata applied."""
    rotation = round((getattr(frame, "rotation", 0) or 0) / 90) % 4
    w, h = scaled_size(*(size if all(size) else (frame.width, frame.height)), short_side)
    rgb = reformatter.reformat(frame, width=w, height=h, format="rgb24", interpolation="BILINEAR").to_ndarray()
    return np.ascontiguousarray(np.rot90(rgb, rotation)) if rotation else rgb


def local_name(path: str) -> str:
    """A local file's name as FFmpeg is given it: a relative name gets `./` in front, so that a file called
    `concat:a|b`, `pipe:0` or `subfile:...` is opened as that file, never read as an FFmpeg protocol."""
    return path if os.path.isabs(path) else os.path.join(".", path)


class FrameFolderReader(Reader):
    """A directory of JPEG/PNG frames, in natural file-name order (frame_2 before frame_10)."""

    def __init__(self, path: str):
        self.path = path
        if not os.path.isdir(path):
            raise VideoReadError(path, "frame folder not found")
        names = [n for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTENSIONS)]
        if not names:
            raise VideoReadError(path, "frame folder holds no .jpg/.jpeg/.png images")
        self._files = [os.path.join(path, n) for n in sorted(names, key=_natural_key)]

    @property
    def num_frames(self) -> int:
        return len(self._files)

    def read(self, indices, short_side: int | None = None) -> np.ndarray:
        """Frames at `indices` as uint8 (N, H, W, 3); `short_side` as for `VideoReader.read`."""
        cache: dict[int, np.ndarray] = {}
        for i in indices:
            if i in cache:
                continue
            try:
                with _open_image(self._files[i]) as img:
                    img = img.convert("RGB")
                    if short_side:
                        scale = short_side / min(img.size)
                        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
                        if size != img.size:
                            img = img.resize(size, Image.BILINEAR)
                    cache[i] = np.asarray(img)
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
                reason = str(e).split(", could be")[0].strip().rstrip(".")
                raise VideoReadError(self._files[i], f"image too large to be a frame ({reason})") from None
            except (OSError, ValueError) as e:
                raise VideoReadError(self._files[i], f"not a readable image ({e})") from None
        shapes = {a.shape for a in cache.values()}
        if len(shapes) > 1:
            raise VideoReadError(self.path, f"frames differ in size: {sorted(shapes)}")
        return np.stack([cache[i] for i in indices])


def _open_image(path: str) -> Image.Image:
    """A PIL image opened from its header only, refused (a VideoReadError naming its size) when it has more than
    `MAX_FRAME_PIXELS` pixels; PIL's decompression-bomb warning is raised as an error (caught by the caller)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        img = Image.open(path)
    width, height = img.size
    if width * height > MAX_FRAME_PIXELS:
        img.close()
        raise VideoReadError(path, f"image too large to be a frame ({width}x{height} pixels, more than the "
                                   f"{MAX_FRAME_PIXELS:,} a frame may have)")
    return img


def _natural_key(name: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name.lower())]


def _why(error: Exception) -> str:
    text = getattr(error, "strerror", None) or str(error)
    return text.split(":")[0].strip() if text else type(error).__name__
