"""`data.decoder=torchcodec` against PyAV on generated videos (skipped where torchcodec cannot be used)."""
import numpy as np
import pytest

from ila.data.decode import VideoReader, open_video
from ila.data.decode_torchcodec import torchcodec_available
from ila.errors import UserError

usable, why = torchcodec_available()
needs_torchcodec = pytest.mark.skipif(not usable, reason=why)


@needs_torchcodec
def test_torchcodec_gives_pyavs_frames_at_the_same_indices(motion):
    path = next(p for p in sorted((motion / "train").iterdir()) if p.suffix == ".mp4")
    with VideoReader(str(path)) as a, open_video(str(path), decoder="torchcodec") as b:
        assert type(b).__name__ == "TorchCodecReader" and a.num_frames == b.num_frames
        idx = [0, 5, 2, 7, 7, a.num_frames - 1]
        assert np.array_equal(a.read(idx), b.read(idx))                 # full size: the same pixels
        ra, rb = a.read(idx, short_side=24).astype(int), b.read(idx, short_side=24).astype(int)
        assert ra.shape == rb.shape and ra.shape[1:3] == (24, 24)
        # resized in FFmpeg's scaler by both, though not in one call: close, and far closer than a neighbour frame
        assert np.abs(ra - rb).mean() < 6 and np.abs(ra - rb).mean() < 0.5 * np.abs(ra[1:] - rb[:-1]).mean()


@needs_torchcodec
def test_torchcodec_bad_files_are_one_line_errors(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 10)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    for path, words in ((junk, "not a readable video"), (empty, "empty file"), (tmp_path / "none.mp4", "not found")):
        with pytest.raises(UserError, match=words) as info:
            open_video(str(path), decoder="torchcodec")
        assert "\n" not in str(info.value)


def test_unknown_decoder_is_refused(motion):
    path = next(p for p in sorted((motion / "train").iterdir()) if p.suffix == ".mp4")
    with pytest.raises(UserError, match="data.decoder must be one of pyav, torchcodec"):
        open_video(str(path), decoder="decord")
