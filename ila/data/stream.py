"""Live streams: frames from a network stream or a capture device as they arrive, and a ring buffer of the recent ones.

    with StreamReader("rtsp://camera/live", timeout=10, short_side=224) as reader:
        for t, frame, arrived in reader.frames():        # seconds since the first frame, uint8 (H, W, 3), monotonic
            ...

What is read: `STREAM_SCHEMES` URLs (rtsp://, rtmp://, tcp://, udp://, rtp://, srt://, http(s)://) and capture
devices `/dev/videoN` (FFmpeg's v4l2 input). Any other `scheme:` name (file:, concat:, pipe:, subfile:, data:, ...)
is refused (`check_stream_url`), and FFmpeg is told to open only network protocols for the stream and everything it
references (`protocol_whitelist`: an HLS playlist cannot pull in a local file), and to read it only as a video
container or elementary stream (`FORMAT_WHITELIST`: a text page is not rendered into frames).

Frames are decoded with PyAV and converted to RGB at the size reads ask for (`frame_to_rgb`, as a file's reader
does: the shorter side scaled to `short_side` during the colour conversion). A frame's time is its timestamp (pts x
time base) from the first frame's, as a file's frames are timed (`VideoReader.frame_times`); where the timestamps
jump backwards, or forwards by more than `max_jump` seconds, the timeline continues from the previous frame (one
interval later) instead, so times never run backwards. No frame for `timeout` seconds (or none while opening) is a
`StreamStopped`; a network error after frames came is one too; the sender closing the stream ends `frames()`.

`FrameRing` keeps the recent frames with their times in a bounded number of bytes (`MAX_STREAM_BUFFER_BYTES`).
"""
from __future__ import annotations

import math
import os
import queue
import re
import threading
import time
from collections import deque
from typing import Iterator

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from ila.data.decode import MAX_FRAME_PIXELS, Reader, VideoReadError, frame_to_rgb
from ila.errors import UserError, printable

# the URL schemes read as live streams (FFmpeg's network protocols); /dev/videoN is a capture device
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "rtmpt", "rtmpts", "tcp", "udp", "rtp", "srt", "http", "https")
# the protocols FFmpeg may open for a stream and what it references (a playlist's segments, RTSP's RTP over UDP)
PROTOCOL_WHITELIST = "tcp,udp,rtp,srtp,rtsp,rtsps,rtmp,rtmps,rtmpt,rtmpts,srt,http,https,httpproxy,tls,crypto"
# the demuxers a stream may be read with (FFmpeg's names): video containers and elementary streams sent live; not
# the ones that turn text or images into "video" (tty renders any text file as frames)
FORMAT_WHITELIST = ("mpegts,rtsp,rtp,sdp,flv,live_flv,hls,dash,matroska,webm,mov,mp4,mjpeg,mpjpeg,h264,hevc,"
                    "mpegvideo,m4v,avi,ogg,ivf,obu,mpegps,asf,nut,rawvideo")
DEVICE = re.compile(r"^/dev/video\d+$")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
# the most bytes of frames a stream's ring buffer holds (the frames of one window at the model's size, and one more)
MAX_STREAM_BUFFER_BYTES = 1 << 30
DEFAULT_TIMEOUT = 10.0


class StreamStopped(UserError):
    """A stream that gave no frame for its timeout, or broke off with a network error, after it was opened."""


def is_stream(name) -> bool:
    """Whether `name` names a live stream that `StreamReader` reads: a `STREAM_SCHEMES` URL or `/dev/videoN`."""
    if not isinstance(name, (str, os.PathLike)):
        return False
    name = os.fspath(name)
    match = _SCHEME.match(name)
    return bool(DEVICE.match(name)) or bool(match and match.group(1).lower() in STREAM_SCHEMES and
                                            name[match.end():].startswith("//"))


def is_url_like(name) -> bool:
    """Whether `name` starts with a `scheme:` that FFmpeg would read as a protocol (rtsp:, file:, concat:, pipe:,
    ...), and so is either a stream (`is_stream`) or to be refused (`check_stream_url`) unless it is a local path."""
    return isinstance(name, (str, os.PathLike)) and bool(_SCHEME.match(os.fspath(name)))


def check_stream_url(name: str) -> str:
    """`name` when `is_stream`; else a one-line UserError naming what is read (FFmpeg's other protocols, such as
    file:, concat:, pipe: and subfile:, read local files or other processes' data and are not opened)."""
    if is_stream(name):
        return name
    match = _SCHEME.match(name)
    what = f"{match.group(1).lower()}: URLs are" if match else "it is"
    raise UserError(f"{printable(name)[:200]}: {what} not read; a live stream is a URL of "
                    f"{', '.join(s + '://' for s in STREAM_SCHEMES)} or a capture device /dev/videoN "
                    f"(FFmpeg's file:, concat:, pipe:, subfile: and other protocols are not opened; give a local "
                    f"video by its path)")


def check_timeout(timeout) -> float:
    """`timeout` (seconds without a frame before a stream counts as stopped) as a float: finite and > 0."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) \
            or not 0 < timeout <= 86400:
        raise UserError(f"--timeout {printable(str(timeout))[:24]}: give the seconds to wait for a frame before a "
                        f"stream counts as stopped, a number > 0 and at most 86400")
    return float(timeout)


class StreamReader(Reader):
    """Frames of one live stream, in the order they arrive (see the module docstring). Use as a context manager."""

    def __init__(self, url: str, timeout: float = DEFAULT_TIMEOUT, short_side: int | None = None,
                 max_jump: float = math.inf, threads: int = 1, clock=time.monotonic):
        self.path = check_stream_url(url)
        self.timeout, self.short_side, self.max_jump, self.clock = check_timeout(timeout), short_side, max_jump, clock
        device = bool(DEVICE.match(url))
        try:
            self._container = av.open(url, format="v4l2" if device else None, timeout=(self.timeout, self.timeout),
                                      options={} if device else {"protocol_whitelist": PROTOCOL_WHITELIST,
                                                                "format_whitelist": FORMAT_WHITELIST},
                                      metadata_errors="ignore")
        except av.error.ExitError:
            raise VideoReadError(url, f"cannot open the stream: no answer within {self.timeout:g} s (--timeout)") \
                from None
        except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
            raise VideoReadError(url, f"cannot open the stream ({_reason(e)})") from None
        try:
            if not self._container.streams.video:
                raise VideoReadError(url, "the stream holds no video")
            self._stream = self._container.streams.video[0]
            self._stream.thread_count = threads
            context = self._stream.codec_context
            self._size = (context.width, context.height)    # every frame at this size (a size change: scaled)
            rate = self._stream.average_rate or self._stream.guessed_rate or self._stream.base_rate
            self._interval = 1 / float(rate) if rate and float(rate) > 0 else 1 / 25
        except BaseException:
            self._container.close()
            raise
        self._reformatter = VideoReformatter()
        self._closing, self._closed = threading.Lock(), False
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.count = 0                 # frames given so far
        self.jumps = 0                 # timestamp discontinuities bridged
        self.last_step = 0.0           # the last interval between two frames (s)

    def frames(self) -> Iterator[tuple[float, np.ndarray, float]]:
        """`(t, frame, arrived)` per frame: `t` seconds since the first frame (never decreasing), `frame` uint8 RGB
        `(H, W, 3)` at `short_side`, `arrived` the clock's time when it was decoded. Ends when the sender ends the
        stream; `StreamStopped` when no frame comes for `timeout` seconds or the connection breaks."""
        base = self._stream.time_base
        first = previous = None
        offset = 0.0
        try:
            for frame in self._decoded():
                if frame.width * frame.height > MAX_FRAME_PIXELS:
                    raise VideoReadError(self.path, f"a frame of {frame.width}x{frame.height} pixels, more than the "
                                                    f"{MAX_FRAME_PIXELS:,} a frame may have")
                pts = frame.pts if frame.pts is not None else frame.dts
                if pts is None or not base:                  # no timestamp: one interval after the previous frame
                    t = 0.0 if previous is None else previous + (self.last_step or self.interval())
                else:
                    if first is None:
                        first = pts
                    t = float((pts - first) * base) + offset
                    if previous is not None and (t < previous or t - previous > self.max_jump):
                        bridged = previous + (self.last_step or self.interval())
                        offset += bridged - t                    # the timeline goes on from the previous frame
                        t, self.jumps = bridged, self.jumps + 1
                if previous is not None and t > previous:
                    self.last_step = t - previous
                previous = t
                self.count += 1
                if not all(self._size):              # not known when opened: the first frame's, for every frame
                    self._size = (frame.width, frame.height)
                yield t, frame_to_rgb(frame, self._size, self.short_side, self._reformatter), self.clock()
        except av.error.ExitError:
            raise StreamStopped(f"{self.path}: no frame for {self.timeout:g} s (--timeout): the stream stopped "
                                f"sending or was dropped") from None
        except av.error.EOFError:
            return
        except (av.error.FFmpegError, OSError) as e:
            raise StreamStopped(f"{self.path}: the stream broke off ({_reason(e)})") from None

    def frames_in_background(self, queue_size: int = 32) -> Iterator[tuple[float, np.ndarray, float]]:
        """`frames()` read by a thread of its own (at most `queue_size` frames ahead, so memory stays bounded and
        a slow consumer slows the reading), so that the caller's thread never waits inside FFmpeg: Ctrl-C stops a
        wait for a silent stream at once instead of after `timeout`. The thread's errors are raised here; when the
        caller stops early, the thread stops at its next frame (or its timeout) and closes the stream."""
        frames: queue.Queue = queue.Queue(queue_size)
        stop = self._stop
        done = object()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    frames.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def run() -> None:
            try:
                for item in self.frames():
                    if not put(item):
                        return
                put(done)
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread, raised there
                put(e)
            finally:
                self.close()

        self._thread = threading.Thread(target=run, name=f"ila stream {self.path}", daemon=True)
        self._thread.start()
        try:
            while True:
                try:
                    item = frames.get(timeout=0.1)       # a short wait: KeyboardInterrupt gets through
                except queue.Empty:
                    continue
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()

    def _decoded(self) -> Iterator[av.VideoFrame]:
        """Decoded frames; a corrupt packet is skipped (a live stream's packets can be lost), not fatal."""
        for packet in self._container.demux(self._stream):
            try:
                yield from packet.decode()
            except av.error.InvalidDataError:
                continue

    def interval(self) -> float:
        """The stream's declared frame interval (s), 1/25 where it declares none (read when opened: the stream
        may be closed by now)."""
        return self._interval

    def close(self) -> None:
        """Close the stream; while `frames_in_background`'s thread reads it, tell the thread to stop and close it."""
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            self._stop.set()
            return
        with self._closing:
            if not self._closed:
                self._container.close()
                self._closed = True


class FrameRing:
    """The recent frames of a stream with their times (seconds, non-decreasing), oldest first, holding at most
    `max_bytes` of pixels: a frame that would pass it is a one-line UserError naming the bytes needed (a stream
    whose frame rate or size, with the window asked for, would not fit; `what` says what to change)."""

    def __init__(self, max_bytes: int = MAX_STREAM_BUFFER_BYTES, what: str = "use a shorter --window"):
        self.max_bytes, self.what = max_bytes, what
        self._times: deque[float] = deque()
        self._frames: deque[np.ndarray] = deque()
        self.bytes = 0
        self.dropped = 0               # frames dropped from the front so far: ring index i is stream frame dropped+i

    def __len__(self) -> int:
        return len(self._frames)

    def push(self, t: float, frame: np.ndarray) -> None:
        if self.bytes + frame.nbytes > self.max_bytes:
            span = t - self._times[0] if self._times else 0.0
            raise UserError(f"the stream's frames do not fit the {self.max_bytes / 2**20:,.3g} MiB buffer: "
                            f"{len(self) + 1} frames of {frame.shape[1]}x{frame.shape[0]} over {span:.3g} s of "
                            f"stream are needed at once (its frame rate or timestamps are out of proportion); "
                            f"{self.what}")
        self._times.append(t)
        self._frames.append(frame)
        self.bytes += frame.nbytes

    def drop_before(self, t: float) -> None:
        """Forget the frames before `t`, except the last of them (the frame on screen at `t`)."""
        while len(self._times) > 1 and self._times[1] <= t:
            self._times.popleft()
            self.bytes -= self._frames.popleft().nbytes
            self.dropped += 1

    @property
    def times(self) -> np.ndarray:
        """`(N,)` float64 seconds of the frames held."""
        return np.fromiter(self._times, dtype=np.float64, count=len(self._times))

    def read(self, indices) -> np.ndarray:
        """The frames at ring `indices` as uint8 `(N, H, W, 3)`."""
        return np.stack([self._frames[int(i)] for i in indices])


def _reason(error: Exception) -> str:
    """FFmpeg's reason for an error, without the URL it repeats."""
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return printable(text.split(":")[0].strip() or type(error).__name__)[:200]
