"""The dataset and loader on real MP4s: exact frames, repeatable randomness across workers and epochs,
flips with label swaps, and bad files (skip / error) reported per epoch from worker processes."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from ila.data.annotations import Sample, load_annotations
from ila.data.dataset import VideoDataset, build_loader, symmetric_label_swap
from ila.data.sampling import item_rng, sample_indices, test_views
from ila.errors import UserError
from test_data_decode import coded_frames, frame_ids, write_video

NUM_GOOD = 4


def raw(clip):
    """A transform that keeps the decoded pixels, to check which frames were taken."""
    return clip.float()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    lines = []
    for i in range(NUM_GOOD):
        write_video(root / f"good{i}.mp4", coded_frames(30 + 10 * i), options={"g": "12"})
        lines.append(f"good{i}.mp4 {i}")
    (root / "zero.mp4").write_bytes(b"")
    (root / "text.mp4").write_text("not a video\n" * 50)
    write_video(root / "truncated.mp4", coded_frames(30))
    (root / "truncated.mp4").write_bytes((root / "truncated.mp4").read_bytes()[: (root / "truncated.mp4").stat().st_size // 2])
    lines += ["missing.mp4 0", "zero.mp4 1", "text.mp4 2", "truncated.mp4 3"]
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    return str(root)


def good_samples(root):
    return load_annotations(os.path.join(root, "train.txt"))[:NUM_GOOD]


def test_test_items_take_the_deterministic_views(data):
    samples = good_samples(data)
    ds = VideoDataset(samples, data, num_frames=4, input_size=32, train=False, clips=2, transform=raw)
    for i in range(NUM_GOOD):
        item = ds[i]
        assert item["video"].shape == (2, 4, 3, 32, 48)
        assert item["label"] == i and item["index"] == i and item["skipped"] == 0
        got = [frame_ids(v.permute(0, 2, 3, 1).numpy().astype(np.uint8)) for v in item["video"]]
        assert got == test_views(30 + 10 * i, 4, 2).tolist()


def test_test_item_shapes_with_the_default_recipe(data):
    samples = good_samples(data)
    assert VideoDataset(samples, data, 8, 32, train=False)[0]["video"].shape == (1, 8, 3, 32, 32)
    ds = VideoDataset(samples, data, 8, 32, train=False, clips=2, crops=3, sampling="dense", frame_interval=2)
    assert ds[1]["video"].shape == (6, 8, 3, 32, 32)


def test_training_frames_follow_seed_epoch_and_index(data):
    samples = good_samples(data)
    ds = VideoDataset(samples, data, num_frames=4, input_size=32, train=True, transform=raw, seed=7)
    ds.set_epoch(3)
    item = ds[2]
    assert item["video"].shape == (4, 3, 32, 48)
    expected = sample_indices(50, 4, "segment", True, item_rng(7, 3, 2))
    assert frame_ids(item["video"].permute(0, 2, 3, 1).numpy().astype(np.uint8)) == expected.tolist()


def test_training_clips_repeat_exactly_and_change_with_epoch(data):
    make = lambda: VideoDataset(good_samples(data), data, num_frames=4, input_size=32, train=True, seed=1)
    a, b = make(), make()
    assert torch.equal(a[1]["video"], b[1]["video"])
    a.set_epoch(1)
    assert not torch.equal(a[1]["video"], b[1]["video"])
    b.set_epoch(1)
    assert torch.equal(a[1]["video"], b[1]["video"])
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    a[0]
    assert torch.equal(torch.rand(1), before)          # items leave the global torch generator alone


def test_loader_batches_are_the_same_with_and_without_worker_processes(data):
    def run(workers):
        ds = VideoDataset(good_samples(data), data, num_frames=4, input_size=32, train=True, seed=3)
        loader = build_loader(ds, batch_size=2, shuffle=True, num_workers=workers, seed=3)
        epochs = []
        for epoch in range(2):
            ds.set_epoch(epoch)                           # reaches the persistent workers too
            epochs.append([(b["index"].tolist(), b["video"]) for b in loader])
        return epochs

    single, multi = run(0), run(2)
    assert [[i for i, _ in e] for e in single] == [[i for i, _ in e] for e in multi]
    assert sorted(sum((i for i, _ in single[0]), [])) == list(range(NUM_GOOD))
    assert [i for i, _ in single[0]] != [i for i, _ in single[1]] or not torch.equal(single[0][0][1], single[1][0][1])
    for e in range(2):
        for (_, x), (_, y) in zip(single[e], multi[e]):
            assert torch.equal(x, y)


def test_horizontal_flip_swaps_labels(data):
    samples = good_samples(data)
    plain = VideoDataset(samples, data, 4, 32, train=True, transform=raw)
    flipping = VideoDataset(samples, data, 4, 32, train=True, transform=raw, hflip=True, label_swap={0: 1})
    flipped = 0
    for epoch in range(4):
        plain.set_epoch(epoch)
        flipping.set_epoch(epoch)
        for i in (0, 1):
            p, f = plain[i], flipping[i]
            if torch.equal(f["video"], p["video"].flip(-1)) and not torch.equal(f["video"], p["video"]):
                flipped += 1
                assert f["label"] == 1 - i
            else:
                assert torch.equal(f["video"], p["video"]) and f["label"] == i
    assert 0 < flipped < 8
    assert symmetric_label_swap([(0, 1), (4, 5)]) == {0: 1, 1: 0, 4: 5, 5: 4}
    with pytest.raises(UserError, match="both"):
        symmetric_label_swap([(0, 1), (0, 2)])


def test_bad_files_are_skipped_and_reported_per_epoch_from_workers(data, caplog):
    samples = load_annotations(os.path.join(data, "train.txt"))
    bad = {os.path.join(data, n) for n in ("missing.mp4", "zero.mp4", "text.mp4", "truncated.mp4")}
    ds = VideoDataset(samples, data, num_frames=4, input_size=32, train=True)
    assert ds.bad_file_policy == "skip"
    loader = build_loader(ds, batch_size=4, shuffle=False, num_workers=2, seed=0)
    for epoch in range(2):
        ds.set_epoch(epoch)
        carried, labels = 0, []
        for batch in loader:
            assert batch["video"].shape[1:] == (4, 3, 32, 32)
            carried += int(batch["skipped"].sum())
            assert all(int(s) < NUM_GOOD for s in batch["sample_index"])
            labels += batch["label"].tolist()
        assert loader.skipped.count == carried >= len(bad)
        assert set(loader.skipped.files) == bad
        assert "file not found" in loader.skipped.files[os.path.join(data, "missing.mp4")]
        assert "0 bytes" in loader.skipped.summary()
        assert len(labels) == len(samples)
    logged = [r.getMessage() for r in caplog.records if "skipping unreadable file" in r.getMessage()]
    assert sorted(m.split()[3].rstrip(":") for m in logged) == sorted(bad)      # each bad file logged once


def test_evaluation_fails_on_a_bad_file_naming_it(data):
    samples = load_annotations(os.path.join(data, "train.txt"))
    ds = VideoDataset(samples, data, num_frames=4, input_size=32, train=False)
    assert ds.bad_file_policy == "error"
    with pytest.raises(UserError, match="zero.mp4: empty file"):
        ds[NUM_GOOD + 1]
    loader = build_loader(ds, batch_size=2, shuffle=False, num_workers=1, seed=0)
    with pytest.raises(UserError) as info:
        list(loader)
    message = str(info.value)
    assert "\n" not in message and "missing.mp4: file not found" in message


def test_only_bad_files_end_with_a_clear_error(data):
    samples = load_annotations(os.path.join(data, "train.txt"))[NUM_GOOD:]
    ds = VideoDataset(samples, data, 4, 32, train=True, max_retries=5)
    with pytest.raises(UserError, match="6 unreadable files in a row"):
        ds[0]


def test_frame_folders_and_paths_under_root(data, tmp_path):
    folder = tmp_path / "clips" / "f0"
    folder.mkdir(parents=True)
    for i, frame in enumerate(coded_frames(9)):
        Image.fromarray(frame).save(folder / f"{i:05d}.png")
    (tmp_path / "frames.txt").write_text("clips/f0 9 2\n")
    samples = load_annotations(str(tmp_path / "frames.txt"), root=str(tmp_path))
    assert samples == [Sample(str(folder), 2, 9)]
    ds = VideoDataset(samples, str(tmp_path), 3, 32, train=False, transform=raw)   # root given twice
    item = ds[0]
    assert frame_ids(item["video"][0].permute(0, 2, 3, 1).numpy().astype(np.uint8)) == [1, 4, 7]
    assert ds.resolve("/abs/x.mp4") == "/abs/x.mp4"
    assert ds.resolve("clips/f0") == str(folder)


def test_invalid_settings():
    with pytest.raises(UserError, match="no samples"):
        VideoDataset([], "", 8, 32, train=True)
    with pytest.raises(UserError, match="bad_file_policy"):
        VideoDataset([Sample("a.mp4", 0)], "", 8, 32, train=True, bad_file_policy="ignore")
