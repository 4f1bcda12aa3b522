"""`ila prepare`: a short-side, keyframe-interval H.264 (or JPEG) copy with its own list; resumable, bad inputs
listed, half-written outputs never counted."""
import os

import pytest

from ila.data.annotations import read_annotations
from ila.data.decode import VideoReader, open_video
from ila.data.prepare import PARTIAL, prepare
from ila.errors import UserError


@pytest.fixture()
def source(motion, tmp_path):
    """The motion set's training list plus an unreadable and a missing video."""
    lines = (motion / "train.txt").read_text().splitlines()[:4]
    (tmp_path / "junk.mp4").write_bytes(b"junk" * 50)
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(lines + [f"{tmp_path}/junk.mp4 1", f"{tmp_path}/missing.mp4 2"]) + "\n")
    return listing, lines


def test_copy_has_the_short_side_keyframes_frames_and_a_list(motion, source, tmp_path):
    listing, lines = source
    out = tmp_path / "out"
    r = prepare(str(listing), str(out), short_side=24, gop=3, workers=2, root=str(motion),
                class_names=str(motion / "classes.txt"), progress=False)
    assert (r.written, r.skipped) == (4, 0) and [os.path.basename(p) for p, _ in r.bad] == ["junk.mp4", "missing.mp4"]
    assert (out / "bad_inputs.tsv").read_text().count("\n") == 2
    ann = read_annotations(r.annotation, root=str(out), class_names=r.class_names)
    orig = read_annotations(str(listing), root=str(motion), class_names=str(motion / "classes.txt"))
    assert [s.label for s in ann.samples] == [s.label for s in orig.samples[:4]]
    for copy, src in zip(ann.samples, orig.samples):
        assert os.path.relpath(copy.path, out).startswith("videos" + os.sep + "train" + os.sep)
        with VideoReader(copy.path) as a, VideoReader(src.path) as b:
            assert a.num_frames == b.num_frames
            assert a._keyframes == list(range(0, a.num_frames, 3))            # a keyframe every 3 frames
            frames = a.read([0, a.num_frames - 1])
            assert frames.shape[1:3] == (24, 24)
            # the same picture, resized: close to the source resized by the decoder
            assert abs(frames.astype(int) - b.read([0, b.num_frames - 1], short_side=24).astype(int)).mean() < 12


def test_second_run_skips_verified_outputs_and_redoes_broken_and_half_written_ones(motion, source, tmp_path):
    listing, _ = source
    out = tmp_path / "out"
    kw = dict(short_side=24, workers=1, root=str(motion), progress=False)
    first = prepare(str(listing), str(out), **kw)
    videos = sorted((out / "videos" / "train").iterdir())
    videos[0].write_bytes(b"")                                     # damaged after the fact: not verified, redone
    stale = out / "videos" / "train" / f"x.mp4{PARTIAL}123.mp4"      # an interrupted run's temporary
    stale.write_bytes(b"half")
    second = prepare(str(listing), str(out), **kw)
    assert (first.written, second.written, second.skipped) == (4, 1, 3) and not stale.exists()
    assert VideoReader(str(videos[0])).num_frames > 0
    assert not any(PARTIAL in n for _, _, names in os.walk(out) for n in names)


def test_jpeg_frame_folders_at_a_lower_rate(motion, source, tmp_path):
    listing, _ = source
    out = tmp_path / "out"
    r = prepare(str(listing), str(out), short_side=16, fps=12.5, frames_jpeg=True, workers=1, root=str(motion),
                progress=False)
    ann = read_annotations(r.annotation, root=str(out), fmt="frames")
    src = read_annotations(str(listing), root=str(motion)).samples[0]
    with VideoReader(src.path) as v:
        expected = int((v.num_frames - 1) / v.fps * 12.5 + 1e-9) + 1     # output instants up to the last frame
    assert len(ann.samples) == 4 and ann.samples[0].num_frames == expected
    reader = open_video(ann.samples[0].path)
    assert reader.num_frames == expected and reader.read([0]).shape[1:3] == (16, 16)


def test_bad_arguments_are_one_line_errors(motion, source, tmp_path):
    listing, _ = source
    for kwargs, words in ((dict(short_side=1), "--short-side"), (dict(gop=0), "--gop"), (dict(fps=0), "--fps"),
                          (dict(workers=0), "--workers")):
        with pytest.raises(UserError, match=words):
            prepare(str(listing), str(tmp_path / "o"), **kwargs)
    with pytest.raises(UserError, match="not a folder"):
        prepare(str(listing), str(listing))
    with pytest.raises(UserError, match="annotation file not found"):
        prepare(str(tmp_path / "none.txt"), str(tmp_path / "o"))
