"""Segment and dense sampling: exact test indices, training ranges, deterministic views and seeds."""
import numpy as np
import pytest

from ila.data.sampling import dense_indices, item_rng, sample_indices, segment_indices, test_views


def test_segment_test_takes_segment_middles():
    assert segment_indices(16, 8, train=False).tolist() == [1, 3, 5, 7, 9, 11, 13, 15]
    assert segment_indices(10, 4, train=False).tolist() == [1, 3, 6, 8]
    assert segment_indices(300, 8, train=False).tolist() == [18, 56, 93, 131, 168, 206, 243, 281]


def test_segment_short_video_repeats_frames():
    assert segment_indices(3, 8, train=False).tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    assert segment_indices(1, 4, train=False).tolist() == [0, 0, 0, 0]
    rng = np.random.default_rng(0)
    for _ in range(50):
        idx = segment_indices(3, 8, train=True, rng=rng)
        assert idx.min() >= 0 and idx.max() <= 2 and np.all(np.diff(idx) >= 0)


def test_segment_train_draws_one_frame_inside_each_segment():
    rng = np.random.default_rng(0)
    seen = np.zeros(40, int)
    for _ in range(400):
        idx = segment_indices(40, 8, train=True, rng=rng)
        assert np.all(idx // 5 == np.arange(8))           # frame k*5 .. k*5+4 for segment k
        seen[idx] += 1
    assert np.all(seen > 0)                               # every frame is reachable


def test_multi_view_segment_offsets_are_spread_and_fixed():
    views = test_views(30, 3, num_views=2)
    assert views.tolist() == [[2, 12, 22], [7, 17, 27]]
    assert np.array_equal(views, test_views(30, 3, num_views=2))


def test_dense_sampling():
    assert dense_indices(100, 8, 4, train=False).tolist() == list(range(35, 64, 4))
    views = test_views(100, 8, num_views=3, mode="dense", interval=4)
    assert views[:, 0].tolist() == [11, 35, 59]
    assert np.all(np.diff(views, axis=1) == 4)
    assert dense_indices(10, 4, 4, train=False).tolist() == [0, 4, 8, 9]     # past the end: last frame
    rng = np.random.default_rng(1)
    starts = {int(dense_indices(40, 4, 5, train=True, rng=rng)[0]) for _ in range(300)}
    assert starts == set(range(0, 25))                    # span 16, so starts 0..24


def test_item_rng_depends_on_seed_epoch_index_attempt_only():
    draw = lambda *key: item_rng(*key).random(4).tolist()
    assert draw(0, 1, 5) == draw(0, 1, 5)
    keys = [(0, 1, 5), (1, 1, 5), (0, 2, 5), (0, 1, 6), (0, 1, 5, 1)]
    assert len({tuple(draw(*k)) for k in keys}) == len(keys)
    assert draw(-1, 0, 0) == draw(2**32 - 1, 0, 0)        # any int seed works


def test_sample_indices_checks_its_inputs():
    with pytest.raises(ValueError, match="random generator"):
        sample_indices(10, 4, train=True)
    with pytest.raises(ValueError, match="unknown sampling mode"):
        sample_indices(10, 4, mode="uniform", train=False)
    with pytest.raises(ValueError, match="0 frames"):
        sample_indices(0, 4, train=False)
