"""`ila prepare`: a short-side, keyframe-interval H.264 (or JPEG) copy with its own list; resumable, bad inputs
listed, half-written outputs never counted."""
import os
import shutil
from pathlib import Path

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
    cases = [(dict(short_side=1), r"--short-side 1 is not allowed; use pixels in \[2, 8192\]"),
             (dict(short_side=10**23), r"--short-side 1\d+ is not allowed"),
             (dict(gop=0), r"--gop 0 is not allowed; use a keyframe interval in \[1, 100000\]"),
             (dict(gop=99999999999999), r"--gop 99999999999999 is not allowed"),       # was: every video 'bad'
             (dict(fps=0), r"--fps 0 is not allowed"), (dict(fps=-1.0), r"--fps -1 is not allowed"),
             (dict(fps=float("inf")), r"--fps inf is not allowed"),                  # was: an endless loop
             (dict(fps=float("nan")), r"--fps nan is not allowed"), (dict(fps=1e308), r"--fps 1e\+308 is not"),
             (dict(workers=0), r"--workers 0 is not allowed; use processes in \[1, 256\]"),
             (dict(workers=100000), r"--workers 100000 is not allowed"),              # was: 100000 processes
             (dict(root=str(tmp_path / "nowhere")), r"--root .*nowhere: folder not found")]  # was: every video 'bad'
    for kwargs, words in cases:
        with pytest.raises(UserError, match=words) as e:
            prepare(str(listing), str(tmp_path / "o"), **kwargs)
        assert "\n" not in str(e.value)
    assert not (tmp_path / "o").exists()                                    # refused before anything is written
    bad_only = tmp_path / "bad_only.txt"
    bad_only.write_text(f"{tmp_path}/junk.mp4 0\n{tmp_path}/missing.mp4 1\n")
    with pytest.raises(UserError, match=r"none of the 2 videos of .*bad_only.txt could be read \(first: .*junk.mp4: "
                                        r"not a readable video .*\); every one is listed in .*bad_inputs.tsv"):
        prepare(str(bad_only), str(tmp_path / "o2"), progress=False)
    assert len((tmp_path / "o2" / "bad_inputs.tsv").read_text().splitlines()) == 2
    with pytest.raises(UserError, match="not a folder"):
        prepare(str(listing), str(listing))
    with pytest.raises(UserError, match="annotation file not found"):
        prepare(str(tmp_path / "none.txt"), str(tmp_path / "o"))


def test_a_class_folder_is_copied_with_its_layout(motion, tmp_path):
    src = tmp_path / "classes"
    videos = sorted(p for p in (motion / "train").iterdir() if p.suffix == ".mp4")[:3]
    for name, video in zip(("jump", "run", "run"), videos):
        (src / name).mkdir(parents=True, exist_ok=True)
        shutil.copy(video, src / name / video.name)
    result = prepare(str(src), str(tmp_path / "copy"), short_side=16, progress=False)
    assert (result.written, result.bad) == (3, [])
    assert (tmp_path / "copy" / "classes.txt").read_text().split() == ["jump", "run"]
    entries = sorted(Path(result.annotation).read_text().splitlines())
    assert entries == [f"videos/jump/{videos[0].stem}.mp4 0", f"videos/run/{videos[1].stem}.mp4 1",
                       f"videos/run/{videos[2].stem}.mp4 1"]
    for bad_out, words in ((src, "is the dataset folder"), (src / "copy", "inside the dataset folder")):
        with pytest.raises(UserError, match=words):
            prepare(str(src), str(bad_out), short_side=16, progress=False)
    with pytest.raises(UserError, match="has no class subfolders"):
        prepare(str(src / "jump"), str(tmp_path / "copy2"), progress=False)
    video = next((src / "jump").iterdir())
    with pytest.raises(UserError, match="is a video; ila prepare copies a dataset: give its annotation file"):
        prepare(str(video), str(tmp_path / "copy2"), progress=False)
    assert not (tmp_path / "copy2").exists()


def test_command_line_mistakes_are_one_line_exit_2(source, tmp_path, capsys):
    from ila.cli import main

    listing, _ = source
    for argv, words in ((["--short-side", "abc"], "argument --short-side: invalid int value: 'abc'"),
                        (["--format", "bogus"], "argument --format: invalid choice: 'bogus'"),
                        (["--fps", "inf"], "--fps inf is not allowed")):
        assert _exit_code(main, ["prepare", str(listing), str(tmp_path / "o"), *argv]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and words in err and err.startswith("ila prepare: error: ")


def _exit_code(main, argv) -> int:
    """main's return value, or the code it exits with (argparse exits)."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code
