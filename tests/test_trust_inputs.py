"""Inputs that should not be trusted blindly: window times from the frames' own timestamps (a variable frame rate,
a declared rate the timestamps contradict), bounded window counts, folder scans through link loops, and frame
images whose header declares a size no frame has."""
import math
import os
import re
import struct
import time
import zlib
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from PIL import Image

from ila.config import load_config
from ila.data.annotations import Sample
from ila.data.decode import MAX_FRAME_PIXELS, FrameFolderReader, VideoReadError, VideoReader
from ila.data.folders import find_videos, read_class_folders
from ila.data.synthetic import write_long_video
from ila.data.transforms import MEAN, STD
from ila.engine import distributed as dist
from ila.engine.loaders import video_dataset
from ila.engine.predict import check_window_flags, video_files
from ila.engine.session import MAX_WINDOWS, MIN_WINDOW_SECONDS, InferenceSession, window_frames, window_spans
from ila.errors import UserError


# ------------------------------------------------------------------------------------------- videos with known times

def write_timed(path, times, grey, rate=30, time_base=Fraction(1, 1000), size=32, bframes=0):
    """A video whose frame k is shown at `times[k]` seconds, a flat grey of level `grey[k]`, its stream declaring
    `rate` frames per second (which the timestamps may contradict)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate, options={"qp": "2", "bf": str(bframes), "g": "12",
                                                                     "threads": "1", "preset": "veryfast"})
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = time_base
        for t, g in zip(times, grey):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), int(g), np.uint8), format="rgb24")
            frame.pts, frame.time_base = int(round(t / time_base)), time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return str(path)


def second_grey(t):
    """Grey level naming the whole second a frame is shown in: 10 + 10 x floor(t)."""
    return 10 + 10 * math.floor(t + 1e-9)


@pytest.fixture(scope="module")
def vfr_video(tmp_path_factory):
    """20 s at a variable frame rate: 10 s at 1 fps (frames at 0..9 s), then 10 s at 25 fps; Matroska, whose
    stream declares 25 fps, so frame index / declared rate puts all 260 frames in 10.4 s."""
    times = [float(k) for k in range(10)] + [10 + k / 25 for k in range(250)]
    path = tmp_path_factory.mktemp("vfr") / "vfr.mkv"
    return write_timed(path, times, [second_grey(t) for t in times], rate=25), times


def stub_session(seconds=20, frames=8, batch=3):
    """An inference session whose 'model' reports which whole seconds its views show (one class per second, the
    probability the share of the T frames): the windows' content, read back through the real `windows` loop."""
    session = InferenceSession.__new__(InferenceSession)
    session.cfg = load_config("tiny", ["device=cpu", f"data.num_frames={frames}", "eval.crops=1",
                                       f"eval.batch_size={batch}"])
    session.amp, session.env = None, dist.Env()
    session.class_names = [f"second {k}" for k in range(seconds)]

    def shown_seconds(views):                             # (B, 1, T, 3, S, S) normalised
        grey = views[:, 0, :, 0].mean((-1, -2)) * STD[0] + MEAN[0]
        second = ((grey - 10) / 10).round().long().clamp(0, seconds - 1)
        return torch.nn.functional.one_hot(second, seconds).float().mean(1)
    session.probabilities = shown_seconds
    return session


def seconds_in(row):
    return [k for k, p in enumerate(row.tolist()) if p > 0]


def test_a_variable_frame_rate_video_is_timed_by_its_timestamps(vfr_video):
    path, times = vfr_video
    with VideoReader(path) as reader:
        assert reader.fps == 25 and reader.num_frames / reader.fps == 10.4        # the old view: index / rate
        timing = reader.frame_times()
    assert timing.source == "timestamps" and timing.duration == pytest.approx(20.0)
    assert np.allclose(timing.times, times)
    result = stub_session().windows(path, 5.0, 5.0, topk=3)
    assert result["duration"] == 20.0
    assert [(w["start"], w["end"]) for w in result["windows"]] == [(0, 5), (5, 10), (10, 15), (15, 20)]
    for w in result["windows"]:                           # each window shows what was on screen in its seconds
        shown = seconds_in(w["probabilities"])
        assert shown and all(w["start"] <= s < w["end"] for s in shown), (w["start"], w["end"], shown)
    assert seconds_in(result["windows"][0]["probabilities"]) == [0, 1, 2, 3, 4]       # 1 fps: T frames over 5 s


def test_window_frames_are_those_whose_timestamps_fall_in_the_window(vfr_video):
    _, times = vfr_video
    times = np.asarray(times)
    for start, end in [(0, 5), (2.5, 7.5), (9.5, 10.5), (10, 10.2), (19.9, 20.0), (3.2, 3.7)]:
        picked = window_frames(times, start, end, 8)
        inside = np.flatnonzero((times >= start) & (times < end))
        if len(inside):
            assert set(picked) <= set(inside), (start, end)
        else:                                             # no frame starts inside: the one on screen at its start
            assert set(picked) == {int(np.searchsorted(times, start, side="right") - 1)}
        assert list(picked) == sorted(picked)


def test_constant_frame_rate_windows_are_as_before(tmp_path):
    path = tmp_path / "long.mp4"
    assert write_long_video(str(path), [0, 2, 4], 3.0, size=32, fps=8) == 9.0
    with VideoReader(str(path)) as reader:
        timing = reader.frame_times()
        n, fps = reader.num_frames, reader.fps
    assert timing.duration == n / fps == 9.0 and np.array_equal(timing.times, np.arange(n) / fps)

    def before(start, end, t):                            # the index arithmetic windows used until now
        lo = min(int(round(start * fps)), n - 1)
        hi = max(min(int(round(end * fps)), n), lo + 1)
        return lo + np.minimum(((np.arange(t) + 0.5) * (hi - lo) / t).astype(np.int64), hi - lo - 1)
    for window, stride in [(4, 3), (2, 1), (1, 0.5), (0.25, 0.125), (9, 9), (20, 1), (2.5, 1.25)]:
        spans = window_spans(timing.duration, window, stride, frame=1 / fps)
        for t in (1, 3, 8, 16):
            for start, end in spans:
                assert np.array_equal(window_frames(timing.times, start, end, t), before(start, end, t))


def test_b_frames_and_a_late_first_timestamp_start_at_zero(tmp_path):
    times = [0.5 + k / 25 for k in range(50)]
    path = write_timed(tmp_path / "b.mp4", times, [100] * 50, rate=25, time_base=Fraction(1, 100), bframes=2)
    with VideoReader(path) as reader:
        timing = reader.frame_times()
        assert reader._keyframes != list(range(50))
    assert timing.times[0] == 0 and timing.duration == pytest.approx(2.0)
    assert np.allclose(timing.times, np.arange(50) / 25)


def test_a_declared_rate_the_timestamps_contradict_is_corrected(tmp_path):
    # the stream says one frame per 11.6 days (1e-6 fps); its frames are 40 ms apart
    times = [k / 25 for k in range(10)]
    path = write_timed(tmp_path / "slow.mkv", times, [100] * 10, rate=Fraction(1, 1_000_000))
    with VideoReader(path) as reader:
        timing = reader.frame_times()
    assert timing.duration == pytest.approx(0.4) and np.allclose(timing.times, times)
    result = stub_session(seconds=1, frames=4).windows(path, 0.2, 0.1, topk=1)
    assert result["duration"] == 0.4 and len(result["windows"]) == 3


def test_a_frame_a_million_seconds_long_is_refused_in_one_line(tmp_path):
    # timestamps that really say 1e6 s per frame: no window of a few seconds holds a frame
    path = tmp_path / "glacial.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(1, 1_000_000), options={"threads": "1"})
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for _ in range(10):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")))
        container.mux(stream.encode())
    start = time.perf_counter()
    with pytest.raises(UserError) as info:
        stub_session().windows(str(path), 4.0, 3.0, topk=1)
    message = str(info.value)
    assert "--window 4 s is shorter than one frame of this video (1e+06 s" in message and "\n" not in message
    assert time.perf_counter() - start < 5


def test_a_stream_without_timestamps_uses_its_one_rate_or_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "raw.h264"                          # an elementary stream: packets without pts or dts
    with av.open(str(path), "w", format="h264") as container:
        stream = container.add_stream("libx264", rate=10, options={"threads": "1"})
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for k in range(20):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.full((32, 32, 3), k, np.uint8), format="rgb24")))
        container.mux(stream.encode())
    with VideoReader(str(path)) as reader:
        assert not reader._has_timestamps
        timing = reader.frame_times()                     # the packets' durations say 10 fps (the header says 25)
        assert timing.source == "frame rate" and timing.duration == pytest.approx(2.0)
        monkeypatch.setattr(reader, "_declared_duration", lambda: 60.0)
        with pytest.raises(VideoReadError, match=r"no usable frame timestamps, and its frame rate \(10 fps: 20 "
                                                 r"frames in 2 s\) contradicts its declared duration \(60 s\)"):
            reader.frame_times()
        monkeypatch.setattr(reader, "_durations", [0] * 20)
        monkeypatch.setattr(type(reader), "fps", property(lambda self: 0.0))
        with pytest.raises(VideoReadError, match="no usable frame timestamps and no frame rate"):
            reader.frame_times()


# ------------------------------------------------------------------------------------------- window bounds

@pytest.mark.parametrize("window, stride, message", [
    (1e-9, None, "--window 1e-09: give at least 0.001 s"),
    (4.0, 1e-7, "--stride 1e-07: give at least 0.001 s"),
    (0.0, None, "--window 0.0: give a window length in seconds > 0"),
    (-1.0, None, "--window -1.0: give a window length"),
    (float("inf"), None, "--window inf"),
    (2.0, float("nan"), "--stride nan: give a stride in seconds > 0"),
    (None, 2.0, "--stride needs --window"),
])
def test_predict_window_flags_are_refused_before_any_video(window, stride, message):
    with pytest.raises(UserError) as info:
        check_window_flags(window, stride)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_predict_window_flags_accepted():
    assert check_window_flags(None, None) == (None, None)
    assert check_window_flags(4.0, None) == (4.0, 4.0)
    assert check_window_flags(MIN_WINDOW_SECONDS, 1e6) == (MIN_WINDOW_SECONDS, 1e6)


def test_window_count_is_capped_naming_the_stride_that_fits():
    hour = 3600.0
    start = time.perf_counter()
    with pytest.raises(UserError) as info:
        window_spans(hour, 4.0, 0.04, frame=0.04)
    message = str(info.value)
    assert time.perf_counter() - start < 0.1
    assert f"more than the {MAX_WINDOWS:,} allowed per video; use a larger --stride (0.3597 or more)" in message
    assert "gives 89,901 windows" in message
    spans = window_spans(hour, 4.0, 0.3597, frame=0.04)
    assert len(spans) <= MAX_WINDOWS and spans[-1][1] == hour
    assert len(window_spans(1e7, 4.0, 1e7 / 10, frame=0.04)) == 11


def test_window_and_stride_at_least_one_frame():
    with pytest.raises(UserError, match=r"--window 0.03 s is shorter than one frame of this video \(0.03333 s, "
                                        r"30 fps\); use --window 0.03334 or more"):
        window_spans(10.0, 0.03, 0.03, frame=1 / 30)
    with pytest.raises(UserError, match=r"--stride 0.01 s is shorter than one frame"):
        window_spans(10.0, 1.0, 0.01, frame=1 / 25)
    assert len(window_spans(10.0, 0.03334, 0.03334, frame=1 / 30)) == 300
    assert window_spans(10.0, 0.04, 0.04, frame=1 / 25)[-1] == pytest.approx((9.96, 10.0))


# ------------------------------------------------------------------------------------------- folder scans with links

@pytest.fixture
def looped(tmp_path):
    """root/a/x.mp4, root/a/b/y.mkv, root/c/z.webm, root/frames/0.png, and links: a self-loop, mutual loops
    (a/toc -> c, c/toa -> a), links to the root and to /, a link to a file, a dangling link."""
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "c").mkdir()
    (root / "frames").mkdir()
    for f in ("a/x.mp4", "a/b/y.mkv", "c/z.webm"):
        (root / f).write_bytes(b"v")
    Image.new("RGB", (4, 4)).save(root / "frames" / "0.png")
    os.symlink(".", root / "self")
    os.symlink("../c", root / "a" / "toc")
    os.symlink("../a", root / "c" / "toa")
    os.symlink("../..", root / "a" / "b" / "up")               # the root of the scan
    os.symlink(str(root), root / "c" / "top")
    os.symlink("/", root / "slash")
    os.symlink("../frames", root / "a" / "frames_again")
    os.symlink("a/x.mp4", root / "x_link.mp4")
    os.symlink("nowhere.mp4", root / "dangling.mp4")
    return root


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def test_link_loops_end_fast_listing_each_video_once(looped):
    found, seconds = timed(find_videos, str(looped))
    assert seconds < 1.0, seconds
    assert found == sorted(str(looped / p) for p in ("a/b/y.mkv", "a/x.mp4", "c/z.webm", "frames", "x_link.mp4",
                                                     "dangling.mp4"))
    listed, seconds = timed(video_files, [str(looped)])
    assert listed == found and seconds < 1.0


def test_a_scan_from_inside_follows_links_out_once(looped):
    found, seconds = timed(find_videos, str(looped / "a"))
    assert seconds < 1.0
    # c through a/toc, the frame folder through a/frames_again; a/b/up (the root, holding a) is not followed
    assert found == sorted(str(looped / "a" / p) for p in ("b/y.mkv", "x.mp4", "toc/z.webm", "frames_again"))


def test_self_and_mutual_loops_alone(tmp_path):
    one = tmp_path / "one"
    one.mkdir()
    (one / "v.mp4").write_bytes(b"v")
    os.symlink(str(one), one / "me")
    os.symlink("me2", one / "me2")                              # a link to itself: not a folder at all
    assert timed(find_videos, str(one))[0] == [str(one / "v.mp4")]
    two = tmp_path / "two"
    (two / "p").mkdir(parents=True)
    (two / "q").mkdir()
    (two / "p" / "v.mkv").write_bytes(b"v")
    os.symlink("../q", two / "p" / "q")
    os.symlink("../p", two / "q" / "p")
    found, seconds = timed(find_videos, str(two))
    assert found == [str(two / "p" / "v.mkv")] and seconds < 1.0


def test_class_folders_through_links(looped, tmp_path):
    data = tmp_path / "data"
    (data / "cooking").mkdir(parents=True)
    (data / "cooking" / "a.mp4").write_bytes(b"v")
    os.symlink(str(looped / "c"), data / "dancing")             # a class folder elsewhere, with a loop back
    os.symlink(".", data / "everything")                        # the dataset itself: not a class
    os.symlink("..", data / "cooking" / "up")
    ann, seconds = timed(read_class_folders, str(data))
    assert seconds < 1.0 and ann.class_names == ["cooking", "dancing"]
    assert [(os.path.relpath(s.path, data), s.label) for s in ann.samples] == [
        ("cooking/a.mp4", 0), ("dancing/toa/b/y.mkv", 1), ("dancing/toa/frames_again", 1), ("dancing/toa/x.mp4", 1),
        ("dancing/z.webm", 1)]


# ------------------------------------------------------------------------------------------- image bombs

def png_declaring(path, width, height):
    """A PNG of a few bytes whose header (IHDR) declares width x height RGB pixels."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    body = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    body += chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


@pytest.mark.parametrize("width, height, message", [
    (30000, 30000, "image too large to be a frame (Image size (900000000 pixels) exceeds limit of"),   # PIL's own
    (9000, 9000, f"image too large to be a frame (9000x9000 pixels, more than the {MAX_FRAME_PIXELS:,}"),
])
def test_an_image_bomb_in_a_frame_folder_is_an_unreadable_video(tmp_path, width, height, message):
    folder = tmp_path / "clip"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (i, i, i)).save(folder / f"{i}.png")
    bomb = png_declaring(folder / "3.png", width, height)
    assert bomb.stat().st_size < 200
    reader = FrameFolderReader(str(folder))
    assert reader.read([0, 1]).shape == (2, 8, 8, 3)
    start = time.perf_counter()
    with pytest.raises(VideoReadError) as info:
        reader.read([0, 3])
    assert time.perf_counter() - start < 0.5               # refused from the header: nothing allocated or decoded
    assert info.value.path == str(bomb) and message in info.value.reason and "\n" not in str(info.value)
    # the one rule for unreadable files: marked (predict reports it) or raised naming the video (eval)
    cfg = load_config("tiny", ["device=cpu", "data.num_frames=4"])
    marked = video_dataset(cfg, [Sample(str(folder), 0)], train=False)
    marked.bad_file_policy = "mark"
    assert "image too large to be a frame" in marked[0]["error"]
    strict = video_dataset(cfg, [Sample(str(folder), 0)], train=False)
    strict.bad_file_policy = "error"
    with pytest.raises(VideoReadError, match=f"^{re.escape(str(folder))}: image too large"):
        strict[0]


def test_pil_bomb_limit_lowered_in_the_test_only(tmp_path, monkeypatch):
    folder = tmp_path / "clip"
    folder.mkdir()
    Image.new("RGB", (64, 64)).save(folder / "0.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)       # 4096 pixels: over PIL's warning limit (3000)
    with pytest.raises(VideoReadError, match=r"image too large to be a frame \(Image size \(4096 pixels\) exceeds "
                                             r"limit of 3000 pixels\)"):
        FrameFolderReader(str(folder)).read([0])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1)          # 4096 > 2 x 1: PIL's error
    with pytest.raises(VideoReadError, match="image too large to be a frame"):
        FrameFolderReader(str(folder)).read([0])
