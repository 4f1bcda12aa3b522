"""Windows over a live stream, each scored as soon as its last frame has arrived.

    for w in stream_windows(session, "rtsp://camera/live", window=2, stride=1, topk=3, timeout=10):
        print(w["start"], w["end"], w["predictions"][0], w["delay"])

The frames come from `ila.data.stream.StreamReader` (decoded at the model's short side) into a `FrameRing` that holds
only what the next windows need: the last `window` seconds and the frame on screen before them. Windows are those of
a file (`window_spans`: [k * stride, k * stride + window), seconds from the first frame), and each reads the frames
a file's window reads (`window_frames` over the buffered frames' times), so a stream and the same video read as a
file give the same frames and the same predictions. Window k is complete, and scored at once, when a frame at or
after its end arrives. When the sender ends the stream, the windows a file of that length would still have are
scored (those ending by its duration, and one ending at its end: `window_spans`).

`delay`: seconds the window's end is behind live when its prediction is ready, live being the stream's clock run at
wall-clock speed from the frame that arrived earliest for its timestamp (a stream sent in real time: how far the
printed window lags the newest moment the camera has sent; sent faster than real time: the time from the window's
last frame arriving to its prediction). Every window is scored: when the model is slower than the stream, frames
wait in the network's buffers and the delay grows, visible in `delay`.
"""
from __future__ import annotations

import math
import time
from typing import Iterator

from ila.data.stream import DEFAULT_TIMEOUT, MAX_STREAM_BUFFER_BYTES, FrameRing, StreamReader
from ila.engine.session import InferenceSession, check_window_seconds, window_frames

# the most windows one frame may complete at once: a timestamp jumping further ahead is a discontinuity (the
# timeline goes on from the previous frame) rather than thousands of windows of one frame
MAX_CATCHUP = 100
_TOL = 1e-9


def stream_windows(session: InferenceSession, url: str, window: float, stride: float, topk: int = 5,
                   timeout: float = DEFAULT_TIMEOUT, max_bytes: int = MAX_STREAM_BUFFER_BYTES,
                   clock=time.monotonic) -> Iterator[dict]:
    """Windows of `window` seconds every `stride` seconds over the live stream `url` (see the module docstring),
    each `{"start", "end", "predictions": top-k, "probabilities": (K,), "delay"}` as soon as it is scored. Ends
    when the stream ends; `ila.data.stream.StreamStopped` after `timeout` seconds without a frame; a UserError
    line for a URL that is not read, cannot be opened, or whose frames do not fit `max_bytes`."""
    window, stride = check_window_seconds("--window", window), check_window_seconds("--stride", stride)
    transform = session.window_transform
    t_frames = session.cfg.data.num_frames
    ring = FrameRing(max_bytes)
    with StreamReader(url, timeout, short_side=transform.short_side, max_jump=window + MAX_CATCHUP * stride,
                      clock=clock) as reader:
        k, newest, live = 0, None, math.inf        # next window; newest frame's time; min(arrival - t)
        count, checked = 0, False                  # frames taken (the reading thread may be ahead)

        def score(start: float, end: float) -> dict:
            indices = window_frames(ring.times, start, end, t_frames)
            row = session.score_clips(ring.read(indices), 1, transform, url)[0]
            return {**session.window_result(start, end, row, topk), "delay": round(max(clock() - live - end, 0.0), 3)}

        for t, frame, arrived in reader.frames_in_background():
            ring.push(t, frame)
            count, newest, live = count + 1, t, min(live, arrived - t)
            while k * stride + window <= t + _TOL * max(1.0, t):       # a frame at or after its end has come
                if not checked:                     # as a file: window and stride at least one frame long
                    frame_time = t / (count - 1) if count > 1 else 0.0
                    check_window_seconds("--window", window, frame_time)
                    check_window_seconds("--stride", stride, frame_time)
                    checked = True
                yield score(k * stride, k * stride + window)
                k += 1
            ring.drop_before(min(k * stride, t - window) - 1e-6)
        if newest is None:
            return
        duration = newest + (reader.last_step or reader.interval())      # as a file's: last frame + its interval
        if not checked:
            check_window_seconds("--window", window, duration / count)
            check_window_seconds("--stride", stride, duration / count)
        for start, end in tail_spans(duration, window, stride, k):
            yield score(start, end)


def tail_spans(duration: float, window: float, stride: float, done: int) -> list[tuple[float, float]]:
    """The windows `window_spans` places in a video of `duration` seconds after its first `done` regular ones
    (the rest of the regular ones, then one ending at the end where the stride leaves the tail uncovered), without
    its cap on the count (a stream has no length to cap)."""
    if duration <= window:
        return [(0.0, duration)] if done == 0 else []
    count = int((duration - window) / stride + 1e-9) + 1
    spans = [(k * stride, k * stride + window) for k in range(done, count)]
    last = (max(count, done) - 1) * stride + window
    if last < duration - 1e-6:
        spans.append((duration - window, duration))
    return spans


def shown(result: dict) -> dict:
    """A window as printed (JSON Lines): start, end, predictions, delay (the probabilities left out)."""
    return {key: result[key] for key in ("start", "end", "predictions", "delay")}


def format_window(result: dict) -> str:
    """A window as one human line: its span, the top classes, the delay behind live."""
    top = ", ".join(f"{p['class']} {p['probability']:.1%}" for p in result["predictions"])
    return f"{result['start']:8.2f}-{result['end']:8.2f} s  {top}  (delay {result['delay']:.2f} s)"
