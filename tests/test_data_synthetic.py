"""The generated motion dataset: files, determinism, time-reversed twins and the motion of each class."""
import os

import numpy as np
import pytest

from ila.cli import main
from ila.data.annotations import load_annotations, load_class_names
from ila.data.decode import VideoReader
from ila.data.synthetic import (DEFAULT_PAIRS, MOTIONS, class_names, hflip_label_swap, make_dataset, render_clip,
                                write_mp4)
from ila.data.positions import read_positions
from ila.errors import UserError


def decode_all(path):
    with VideoReader(path) as reader:
        return reader.read(range(reader.num_frames))


def test_make_dataset_writes_h264_clips_lists_and_class_names(tmp_path, capsys):
    out = str(tmp_path / "motion")
    assert make_dataset(out, num_train=16, num_val=8, size=32, frames=8, seed=0) == out
    assert "wrote 16 train + 8 val clips" in capsys.readouterr().out
    names = load_class_names(os.path.join(out, "classes.txt"))
    assert names == class_names() and len(names) == 8
    train = load_annotations(os.path.join(out, "train.txt"), root=out)
    val = load_annotations(os.path.join(out, "val.txt"), root=out)
    assert len(train) == 16 and len(val) == 8
    assert sorted(s.label for s in train) == sorted(list(range(8)) * 2)     # balanced classes
    with VideoReader(train[3].path) as reader:
        assert reader.num_frames == 8
        assert reader._stream.codec_context.name == "h264"
        assert reader._stream.codec_context.pix_fmt == "yuv420p"
        assert reader.read([0, 7]).shape == (2, 32, 32, 3)


def test_same_seed_same_bytes_other_seed_other_clips(tmp_path):
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        make_dataset(str(tmp_path / name), num_train=4, num_val=2, size=32, frames=6, seed=seed, verbose=False)
    read = lambda name, rel: (tmp_path / name / rel).read_bytes()
    for rel in ("train/000000.mp4", "train/000003.mp4", "val/000001.mp4", "train.txt", "classes.txt"):
        assert read("a", rel) == read("b", rel)
    assert read("a", "train/000000.mp4") != read("c", "train/000000.mp4")


@pytest.mark.parametrize("pair", range(4))
def test_a_twin_is_its_partner_played_backwards_even_after_encoding(tmp_path, pair):
    forward = render_clip(2 * pair, 32, 8, np.random.default_rng(11))
    backward = render_clip(2 * pair + 1, 32, 8, np.random.default_rng(11))
    assert np.array_equal(backward, forward[::-1])                     # same frame set, opposite order
    write_mp4(str(tmp_path / "f.mp4"), forward)
    write_mp4(str(tmp_path / "b.mp4"), backward)
    assert np.array_equal(decode_all(str(tmp_path / "b.mp4")), decode_all(str(tmp_path / "f.mp4"))[::-1])


def object_track(clip):
    """Per frame: centroid (x, y), area and mean contrast of the pixels that differ from the background."""
    background = np.median(clip.reshape(-1, 3), axis=0)
    diff = np.abs(clip.astype(float) - background).sum(-1)
    track = []
    for d in diff:
        mask = d > 60
        ys, xs = np.nonzero(mask)
        track.append((xs.mean() if len(xs) else np.nan, ys.mean() if len(ys) else np.nan, mask.sum(), d.mean()))
    return np.array(track)


def test_each_forward_class_moves_as_named():
    pairs = ("horizontal", "vertical", "scale", "fade", "rotation")
    for seed in range(5):
        clips = [render_clip(2 * p, 64, 12, np.random.default_rng(seed), pairs=pairs, distractors=0, texture=0)
                 for p in range(len(pairs))]
        x, y, area, contrast = (object_track(c) for c in clips[:4])
        assert np.all(np.diff(x[:, 0]) > 0)                            # left to right
        assert np.all(np.diff(y[:, 1]) > 0)                            # top to bottom
        assert area[-1, 2] > 2 * area[0, 2]                            # growing
        assert contrast[-1, 3] > contrast[0, 3] and contrast[0, 3] < 1  # fading in from nothing
        rot = object_track(clips[4])[:, :2]
        steps = np.diff(rot, axis=0)
        turn = steps[:-1, 0] * steps[1:, 1] - steps[:-1, 1] * steps[1:, 0]
        assert turn.sum() > 0                                          # clockwise on screen (y down)


def test_class_names_and_flip_swap():
    assert class_names()[:2] == list(MOTIONS[DEFAULT_PAIRS[0]])
    assert hflip_label_swap() == {0: 1, 6: 7}
    assert class_names(("vertical", "fade")) == ["moving top to bottom", "moving bottom to top",
                                                  "appearing (fading in)", "disappearing (fading out)"]


def test_invalid_arguments_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="even"):
        make_dataset(str(tmp_path), num_train=2, num_val=0, size=33)
    with pytest.raises(UserError, match="unknown motion"):
        make_dataset(str(tmp_path), num_train=2, num_val=0, pairs=("spiral",))
    with pytest.raises(UserError, match="no motion pairs given; choose one or more of horizontal"):
        make_dataset(str(tmp_path), num_train=2, num_val=0, pairs=())
    with pytest.raises(UserError, match="frames"):
        make_dataset(str(tmp_path), num_train=2, num_val=0, frames=1)


def test_cli_make_dataset(tmp_path, capsys):
    out = str(tmp_path / "cli")
    assert main(["make-dataset", out, "--train", "8", "--val", "8", "--size", "32", "--frames", "4"]) == 0
    assert len(load_annotations(os.path.join(out, "val.txt"))) == 8
    assert main(["make-dataset", out, "--size", "31"]) == 2
    assert "error" in capsys.readouterr().err


def test_make_dataset_records_each_frames_object_centre(tmp_path):
    """positions.json: one centre per frame of every clip, the clip's own random draws (the clips are the same
    bytes as without it), reversed with the clip for a twin, missing where a fade hides the object."""
    out = tmp_path / "motion"
    make_dataset(str(out), num_train=8, num_val=8, size=32, frames=8, seed=0, verbose=False)
    positions = read_positions(out / "positions.json")
    assert positions.size == (32, 32) and len(positions.videos) == 16
    for split, count in (("train", 8), ("val", 8)):
        for i in range(count):
            key = [0, 0 if split == "train" else 1, i]
            clip, where = render_clip(i % 8, 32, 8, np.random.default_rng(key), centres=True)
            assert np.array_equal(clip, render_clip(i % 8, 32, 8, np.random.default_rng(key)))   # the same draws
            np.testing.assert_allclose(positions.centres(str(out / f"{split}/{i:06d}.mp4")), where, atol=1e-3)
            assert positions.centres(f"{split}/{i:06d}.mp4") is not None      # as the lists name it, too
    right, left = (positions.videos[f"val/00000{k}.mp4"] for k in (0, 1))      # moving left to right / back
    assert (np.diff(right[:, 0]) > 0).all() and (np.diff(left[:, 0]) < 0).all() and np.ptp(right[:, 1]) == 0
    fade_out = positions.videos["val/000005.mp4"]                               # disappearing: gone at the end
    assert np.isnan(fade_out[-1]).all() and np.isfinite(fade_out[0]).all()
    assert positions.centres(str(tmp_path / "elsewhere.mp4")) is None


def test_a_twins_centres_are_its_partners_reversed():
    forward, a = render_clip(0, 32, 8, np.random.default_rng(5), centres=True)
    backward, b = render_clip(1, 32, 8, np.random.default_rng(5), centres=True)
    assert np.array_equal(forward[::-1], backward) and np.array_equal(a[::-1], b)


def test_flicker_redraws_the_background_under_the_same_object():
    """`flicker=True`: frame 0 and the object (its centres, shape, colour) are those of the static clip; the textured
    background of every later frame is drawn anew, so consecutive frames differ away from the object too."""
    key = dict(pairs=("horizontal", "vertical"), distractors=1, texture=0.8)
    static, where = render_clip(0, 48, 6, np.random.default_rng(7), centres=True, **key)
    flick, where_f = render_clip(0, 48, 6, np.random.default_rng(7), centres=True, flicker=True, **key)
    assert np.array_equal(where, where_f) and np.array_equal(static[0], flick[0])
    far = np.ones((48, 48), bool)                               # pixels more than 18 px from the object in frames 0-1
    yy, xx = np.mgrid[:48, :48] + 0.5
    for x, y in where[:2]:
        far &= np.hypot(xx - x, yy - y) > 18
    still = np.abs(static[1].astype(int) - static[0])[far].mean()
    moved = np.abs(flick[1].astype(int) - flick[0])[far].mean()
    assert still == 0 and moved > 10
    # a flat background has nothing to redraw; the reversed twin reverses the flickering clip too
    flat = [render_clip(0, 48, 6, np.random.default_rng(7), texture=0.0, distractors=0, flicker=f) for f in (0, 1)]
    assert np.array_equal(*flat)
    twin = render_clip(1, 48, 6, np.random.default_rng(7), flicker=True, **key)
    assert np.array_equal(twin, flick[::-1])


def test_cli_make_dataset_pairs_and_flicker(tmp_path, capsys):
    """`--pairs` picks the motion pairs (2 classes each), `--flicker` redraws the background in every frame; a bad
    pair is one line naming the choices."""
    out = tmp_path / "moving"
    assert main(["make-dataset", str(out), "--train", "4", "--val", "4", "--size", "32", "--frames", "4",
                 "--pairs", "horizontal,vertical", "--flicker", "--distractors", "0", "--texture", "0.8"]) == 0
    assert load_class_names(str(out / "classes.txt")) == [*MOTIONS["horizontal"], *MOTIONS["vertical"]]
    frames = decode_all(str(out / "train" / "000000.mp4")).astype(int)
    assert np.abs(frames[1] - frames[0]).mean() > 5          # the whole background changed, not only the object
    assert main(["make-dataset", str(tmp_path / "bad"), "--pairs", "horizontal,sideways"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown motion pair(s) ['sideways']; choose from horizontal, vertical" in err[0]
