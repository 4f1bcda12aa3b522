"""PyAV decoding and frame folders, on real files written with PyAV / PIL in a temp dir.

Test videos code frame i in two grey levels, so the decoded pixels name the frame.
"""
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

from ila.data.decode import FrameFolderReader, VideoReadError, VideoReader, open_video
from ila.errors import UserError


def coded_frames(n, height=32, width=48):
    """Grey frames that code their index: left half 40 + 6 (i % 30), right half 40 + 40 (i // 30)."""
    i = np.arange(n)
    frames = np.empty((n, height, width, 3), np.uint8)
    frames[:, :, : width // 2] = (40 + 6 * (i % 30))[:, None, None, None]
    frames[:, :, width // 2:] = (40 + 40 * (i // 30))[:, None, None, None]
    return frames


def frame_ids(frames):
    """Which coded frame each decoded frame is (read from the middle of each half)."""
    width = frames.shape[2]
    left = frames[:, 4:-4, 4: width // 2 - 4].reshape(len(frames), -1).mean(1)
    right = frames[:, 4:-4, width // 2 + 4: -4].reshape(len(frames), -1).mean(1)
    return (np.round((left - 40) / 6) + 30 * np.round((right - 40) / 40)).astype(int).tolist()


def write_video(path, frames, codec="libx264", options=None, pix_fmt="yuv420p", pts=None, time_base=None,
                rotation=None, fps=25):
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps, options=options or {})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        stream.bit_rate = 8_000_000                      # near-lossless, so frame colours survive
        if time_base is not None:
            stream.codec_context.time_base = time_base
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for k, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(f, format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = int(pts[k]), time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return str(path)


class CountingReader(VideoReader):
    """A reader that counts the frames it decodes."""

    decoded = 0

    def _frames(self, *args):
        for frame in super()._frames(*args):
            self.decoded += 1
            yield frame


def test_reads_exact_frames_in_any_order_with_repeats(tmp_path):
    path = write_video(tmp_path / "a.mp4", coded_frames(40), options={"g": "8", "bframes": "3"})
    with VideoReader(path) as reader:
        assert reader.num_frames == 40
        assert reader.fps == pytest.approx(25)
        frames = reader.read([39, 0, 5, 5, 20])
    assert frames.shape == (5, 32, 48, 3) and frames.dtype == np.uint8
    assert frame_ids(frames) == [39, 0, 5, 5, 20]


def test_seeks_to_keyframe_and_stops_after_last_wanted(tmp_path):
    path = write_video(tmp_path / "gop.mp4", coded_frames(120), options={"g": "10", "keyint_min": "10",
                                                                           "sc_threshold": "0", "bframes": "0"})
    # counts are upper bounds: unwanted frames that nothing references are not decoded at all
    with CountingReader(path) as reader:
        assert reader._keyframes == list(range(0, 120, 10))
        assert frame_ids(reader.read([95])) == [95]
        assert reader.decoded <= 6                          # frames 90..95 at most
    with CountingReader(path) as reader:
        assert frame_ids(reader.read([3, 5, 97])) == [3, 5, 97]
        assert reader.decoded <= 6 + 8                      # 0..5, then a new seek: 90..97
    with CountingReader(path) as reader:
        wanted = np.arange(4, 120, 15)                      # 8 frames spread over the video
        assert frame_ids(reader.read(wanted)) == wanted.tolist()
        assert reader.decoded <= 60                         # of the 110 up to the last wanted


def test_unreferenced_frames_are_skipped_unless_wanted(tmp_path):
    path = write_video(tmp_path / "b.mp4", coded_frames(40), options={"g": "40", "x264-params": "bframes=3:b-adapt=0:b-pyramid=none"})
    with av.open(path) as container:                        # which frames are B-frames (referenced by none)
        b_frames = [str(f.pict_type) in ("B", "3") for f in container.decode(video=0)]
    assert sum(b_frames) >= 5
    with CountingReader(path) as reader:
        assert frame_ids(reader.read(range(40))) == list(range(40)) and reader.decoded == 40
    last_p = max(i for i, b in enumerate(b_frames) if not b)
    with CountingReader(path) as reader:
        assert frame_ids(reader.read([last_p])) == [last_p]
        assert reader.decoded == last_p + 1 - sum(b_frames[:last_p])


def test_variable_frame_rate_indexes_frames_in_presentation_order(tmp_path):
    gaps = np.random.default_rng(0).integers(5, 120, 29)
    pts = np.concatenate([[0], np.cumsum(gaps)])
    path = write_video(tmp_path / "vfr.mp4", coded_frames(30), pts=pts, time_base=Fraction(1, 1000),
                       options={"g": "7", "qp": "2"})
    with VideoReader(path) as reader:
        assert reader.num_frames == 30
        assert frame_ids(reader.read(range(30))) == list(range(30))
        assert frame_ids(reader.read([29, 13, 14])) == [29, 13, 14]


@pytest.mark.parametrize("name,codec", [("raw.h264", "libx264"), ("clip.avi", "mpeg4"), ("clip.webm", "libvpx-vp9")])
def test_other_containers_and_streams_without_timestamps(tmp_path, name, codec):
    path = write_video(tmp_path / name, coded_frames(12), codec=codec)
    with VideoReader(path) as reader:
        assert reader.num_frames == 12
        assert frame_ids(reader.read([11, 2, 7])) == [11, 2, 7]


def test_odd_size_and_short_side_resize(tmp_path):
    rng = np.random.default_rng(1)
    frames = np.repeat(rng.integers(0, 255, (1, 49, 65, 3), dtype=np.uint8), 5, axis=0)
    path = write_video(tmp_path / "odd.mkv", frames, pix_fmt="yuv444p", options={"qp": "0"})
    with VideoReader(path) as reader:
        out = reader.read([4])
        assert out.shape == (1, 49, 65, 3)
        assert np.abs(out[0].astype(int) - frames[0]).mean() < 3
        assert reader.read([0, 1], short_side=24).shape == (2, 24, 32, 3)


def test_a_size_change_inside_the_stream_keeps_one_output_size(tmp_path):
    write_video(tmp_path / "a.h264", coded_frames(5))
    write_video(tmp_path / "b.h264", coded_frames(10, 64, 96)[5:])
    joined = tmp_path / "joined.h264"                     # raw H.264 streams concatenate as they are
    joined.write_bytes((tmp_path / "a.h264").read_bytes() + (tmp_path / "b.h264").read_bytes())
    with VideoReader(str(joined)) as reader:
        frames = reader.read(range(10))
    assert frames.shape == (10, 32, 48, 3) and frame_ids(frames) == list(range(10))


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_rotation_metadata_is_applied(tmp_path, rotation):
    frame = np.zeros((32, 48, 3), np.uint8)
    frame[:16, :24] = (220, 30, 30)                      # red top-left quarter, rest black
    frames = np.repeat(frame[None], 3, axis=0)
    path = write_video(tmp_path / "rot.mp4", frames, rotation=rotation)
    with VideoReader(path) as reader:
        out = reader.read([1])[0]
    expected = np.rot90(frame, rotation // 90)           # the display rotation is anticlockwise
    assert out.shape == expected.shape
    assert np.abs(out.astype(int) - expected).mean() < 8


@pytest.mark.parametrize("kind", ["missing", "zero_bytes", "text", "truncated", "audio_only", "no_frames",
                                  "directory"])
def test_unreadable_files_raise_a_user_error_naming_the_path(tmp_path, kind):
    path = tmp_path / f"{kind}.mp4"
    if kind == "zero_bytes":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not a video\n" * 20)
    elif kind == "truncated":
        write_video(path, coded_frames(30))
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "audio_only":
        path = tmp_path / "audio.m4a"
        with av.open(str(path), "w") as container:
            stream = container.add_stream("aac", rate=16000)
            samples = av.AudioFrame.from_ndarray(np.zeros((1, 16000), np.float32), format="fltp", layout="mono")
            samples.sample_rate = 16000
            container.mux(stream.encode(samples))
            container.mux(stream.encode())
    elif kind == "no_frames":
        container = av.open(str(path), "w")
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        container.start_encoding()
        container.close()
    elif kind == "directory":
        path = tmp_path / "video.mp4"
        path.mkdir()
        (path / "notes.txt").write_text("no frames here")
    with pytest.raises(VideoReadError) as info:
        with open_video(str(path)) as reader:
            reader.read([0])
    assert isinstance(info.value, UserError)
    assert str(path) in str(info.value) and info.value.reason
    assert "\n" not in str(info.value)


def test_corrupt_packets_past_the_header_fail_clearly(tmp_path):
    path = tmp_path / "cut.mp4"
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:   # index at the front
        stream = container.add_stream("libx264", rate=25, options={"g": "5"})
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        noise = np.random.default_rng(0).integers(0, 255, (30, 32, 48, 3), dtype=np.uint8)
        for f in noise:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode())
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    with VideoReader(str(path)) as reader:
        assert 0 < reader.num_frames < 30
        assert reader.read([0]).shape == (1, 32, 48, 3)
        with pytest.raises(VideoReadError, match="truncated or corrupt"):
            reader.read([reader.num_frames - 1])


def test_frame_folder_in_natural_order(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(coded_frames(12)):
        Image.fromarray(f).save(folder / f"img_{i + 1}.{'png' if i % 2 else 'jpg'}")
    (folder / "readme.txt").write_text("ignored")
    with open_video(str(folder)) as reader:
        assert isinstance(reader, FrameFolderReader)
        assert reader.num_frames == 12
        assert frame_ids(reader.read([11, 1, 9, 9])) == [11, 1, 9, 9]
        assert reader.read([0], short_side=16).shape == (1, 16, 24, 3)


def test_frame_folder_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VideoReadError, match="no .jpg"):
        FrameFolderReader(str(empty))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "00001.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(VideoReadError, match="00001.jpg: not a readable image"):
        FrameFolderReader(str(broken)).read([0])
