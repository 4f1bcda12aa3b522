"""`data.decoder=torchcodec` against PyAV on generated videos (skipped where torchcodec cannot be used)."""
import numpy as np
import pytest

from ila.data.decode import DECODERS, VideoReader, decodes_on_gpu, open_video
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
    with pytest.raises(UserError, match="data.decoder='decord' is not allowed; use one of pyav, torchcodec") as e:
        open_video(str(path), decoder="decord")
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------ the registry

def test_decoders_are_registered_once_where_they_are_written():
    from ila.data import decode, decode_torchcodec

    assert DECODERS.names() == ("pyav", "torchcodec", "torchcodec-cuda")
    assert DECODERS.get("pyav").obj is decode.open_pyav
    assert DECODERS.get("torchcodec").obj is decode_torchcodec.open_torchcodec
    assert DECODERS.get("torchcodec-cuda").obj is decode_torchcodec.open_torchcodec_cuda
    assert [d for d in DECODERS.names() if decodes_on_gpu(d)] == ["torchcodec-cuda"]
    assert all(e.description for e in DECODERS)


def test_no_import_cycle_between_decode_and_torchcodec():
    """decode_torchcodec imports decode at the top; decode never imports decode_torchcodec (the registry loads it
    by name): in a fresh interpreter either module imports first, and the registry holds the three decoders."""
    import ast
    import subprocess
    import sys
    from pathlib import Path

    import ila.data.decode as decode

    tree = ast.parse(Path(decode.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any(m and "decode_torchcodec" in m for m in imported)
    for first in ("ila.data.decode", "ila.data.decode_torchcodec"):
        code = (f"import {first}; from ila.data.decode import DECODERS; import sys; "
                f"print(','.join(DECODERS.names()))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and out.stdout.strip() == "pyav,torchcodec,torchcodec-cuda", out.stderr


def test_every_registered_decoder_is_a_valid_data_decoder(capsys):
    from ila.cli import main
    from ila.config import REGISTERED_CHOICES, config_keys, load_config

    assert REGISTERED_CHOICES["data.decoder"]() == DECODERS.names()
    row = next(r for r in config_keys() if r[0] == "data.decoder")
    assert row[1:] == ("one of " + ", ".join(DECODERS.names()), "pyav")
    for name in DECODERS.names():
        sets = ["data.workers=0", "data.augment=device"] if decodes_on_gpu(name) else []
        assert load_config("tiny", [f"data.decoder={name}", *sets]).data.decoder == name
        assert main(["config", "show", "tiny", "--set", f"data.decoder={name}", *sets]) in (0, None)
        assert f"decoder: {name}" in capsys.readouterr().out


def test_an_unknown_decoder_names_exactly_the_registered_ones(capsys):
    from ila.cli import main
    from ila.config import load_config

    allowed = ", ".join(DECODERS.names())
    for value in ("decord", "PyAV", "", "torchcodec,pyav"):
        with pytest.raises(UserError) as e:
            load_config("tiny", [f"data.decoder={value}"])
        assert str(e.value) == f"data.decoder={value!r} is not allowed; use one of {allowed}"
    assert main(["config", "show", "tiny", "--set", "data.decoder=decord"]) == 2
    err = capsys.readouterr().err
    assert err == f"ila config: error: data.decoder='decord' is not allowed; use one of {allowed}\n"


def test_a_decoder_registered_later_is_a_valid_data_decoder(motion):
    """A decoder registered by anyone (here: a test) is accepted by the config and used by `open_video` without
    any other edit; unregistered, it is refused again."""
    from ila.config import load_config

    path = str(next(p for p in sorted((motion / "train").iterdir()) if p.suffix == ".mp4"))
    opened = []

    def open_recorded(path, threads=1, short_side=None):
        opened.append((path, threads, short_side))
        return VideoReader(path, threads=threads)

    DECODERS.register("recorded", open_recorded, description="PyAV, noting each file")
    try:
        assert load_config("tiny", ["data.decoder=recorded"]).data.decoder == "recorded"
        with open_video(path, threads=2, decoder="recorded", short_side=24) as reader:
            assert reader.read([0]).shape[0] == 1
        assert opened == [(path, 2, 24)]
    finally:
        DECODERS.unregister("recorded")
    with pytest.raises(UserError, match="use one of pyav, torchcodec, torchcodec-cuda$"):
        load_config("tiny", ["data.decoder=recorded"])


# ------------------------------------------------------------------------------------------ decoder threads

@pytest.fixture(scope="module")
def bframes(tmp_path_factory):
    """A 160x96 H.264 video with B-frames and a keyframe every 12 frames (48 frames): frame threading has
    frames in flight, seeking has several keyframes to choose from."""
    import av

    path = tmp_path_factory.mktemp("threads") / "b.mp4"
    rng = np.random.default_rng(0)
    scene = np.kron(rng.integers(0, 256, (8, 24, 3), np.uint8), np.ones((16, 16, 1), np.uint8))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=24, options={"g": "12", "keyint_min": "12", "bf": "3"})
        stream.width, stream.height, stream.pix_fmt = 160, 96, "yuv420p"
        for k in range(48):
            frame = np.ascontiguousarray(scene[:96, 4 * k: 4 * k + 160])
            frame[(k * 3) % 60:(k * 3) % 60 + 20, (k * 7) % 120:(k * 7) % 120 + 20] = (255, 5 * k, 0)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return str(path)


@pytest.mark.parametrize("decoder", ["pyav", pytest.param("torchcodec", marks=needs_torchcodec)])
def test_frames_are_the_same_whatever_the_thread_count(bframes, decoder):
    idx = [30, 3, 3, 17, 47, 0, 25, 12, 11, 46]                  # across keyframes, backwards, repeats, B-frames
    reads = {}
    for threads in (1, 2, 0):
        with open_video(bframes, threads=threads, decoder=decoder, short_side=64) as reader:
            assert reader.num_frames == 48
            reads[threads] = reader.read(idx), reader.read(idx, short_side=64), reader.read(sorted(set(idx)))
    assert len({a.shape for a, _, _ in reads.values()}) == 1 and reads[1][1].shape[1:3] == (64, 107)
    for threads in (2, 0):
        for got, want in zip(reads[threads], reads[1]):
            assert np.array_equal(got, want), (decoder, threads)
    # and the frames are distinct (the test could tell a wrong frame from the right one)
    assert not np.array_equal(reads[1][0][0], reads[1][0][3])


def test_pyav_threads_reach_the_codec(bframes):
    with open_video(bframes, threads=2) as reader:
        reader.read([5])
        ctx = reader._stream.codec_context
        assert (ctx.thread_count, ctx.thread_type.name) == (2, "AUTO")    # frame + slice threading
    with open_video(bframes, threads=1) as reader:
        assert reader._stream.codec_context.thread_count == 1


@pytest.mark.parametrize("threads", [-1, 65, 2**40, 1.5, "2", True, None])
def test_bad_thread_counts_are_one_line(bframes, threads):
    with pytest.raises(UserError, match=r"data\.decoder_threads=.* is not allowed; use an integer in \[0, 64\]") as e:
        open_video(bframes, threads=threads)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------ torchcodec on CUDA

@needs_torchcodec
def test_gpu_side_resize_is_close_to_the_decoders(bframes):
    """`resize_frames` (what torchcodec-cuda does on the GPU, run here on the CPU) against FFmpeg's scaler."""
    import torch

    from ila.data.decode_torchcodec import TorchCodecReader, resize_frames

    with TorchCodecReader(bframes) as reader:
        idx = [0, 13, 40]
        full, scaled = torch.from_numpy(reader.read(idx)), reader.read(idx, short_side=64).astype(int)
        ours = resize_frames(full, (107, 64))
        assert ours.dtype == torch.uint8 and tuple(ours.shape) == (3, 64, 107, 3)
        diff = np.abs(ours.numpy().astype(int) - scaled)
        assert diff.mean() < 4 and diff.mean() < 0.5 * np.abs(ours.numpy()[1:].astype(int) - scaled[:-1]).mean()


no_cuda = pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusals of a CPU-only machine")


def test_cuda_decoding_config_round_trips_and_refuses_what_cannot_work():
    from ila.config import load_config

    cfg = load_config("tiny", ["data.decoder=torchcodec-cuda", "data.workers=0", "data.augment=device",
                               "data.decoder_threads=0"])
    again = load_config(__import__("yaml").safe_load(cfg.to_yaml()))
    assert (again.data.decoder, again.data.workers, again.data.decoder_threads) == ("torchcodec-cuda", 0, 0)
    for sets, words in ((["data.workers=2"], "data.workers=2 is not allowed; use 0 with data.decoder=torchcodec-cuda"),
                        (["data.workers=0", "data.cache=memory"], "data.cache='memory' is not allowed; use none with"),
                        (["data.workers=0", "device=cpu"], "device='cpu' is not allowed; use auto or cuda with")):
        with pytest.raises(UserError, match=words) as e:
            load_config("tiny", ["data.decoder=torchcodec-cuda", *sets])
        assert "\n" not in str(e.value) and "data.decoder=torchcodec" in str(e.value)


@no_cuda
def test_cuda_decoding_is_refused_in_one_line_without_a_gpu(motion, tmp_path):
    from ila.config import load_config
    from ila.data.annotations import Sample
    from ila.data.dataset import VideoDataset, build_loader
    from ila.engine.loaders import video_dataset

    path = next(p for p in sorted((motion / "train").iterdir()) if p.suffix == ".mp4")
    samples = [Sample(str(path), 0)]
    base = ["data.decoder=torchcodec-cuda", "data.workers=0"]
    for sets, train, words in (
            ([], True, "set data.augment=device and data.recipe=release"),            # augment=cpu: refused first
            (["data.augment=device", "data.recipe=crop"], True, "set data.augment=device and data.recipe=release"),
            (["data.augment=device"], True, "data.decoder=torchcodec-cuda"),          # then: no GPU (or no torchcodec)
            ([], False, "data.decoder=torchcodec-cuda")):                             # evaluation too
        cfg = load_config("tiny", base + sets)
        with pytest.raises(UserError, match=words) as e:
            video_dataset(cfg, samples, train=train)
        message = str(e.value)
        # names what to set: CPU decoding (with torchcodec installed) or PyAV (without it), or the recipe
        assert "\n" not in message and any(fix in message for fix in (
            "set data.decoder=torchcodec", "set data.decoder=pyav", "data.recipe=release"))
    with pytest.raises(UserError, match="data.decoder=torchcodec-cuda") as e:
        open_video(str(path), decoder="torchcodec-cuda")
    assert "set data.decoder=" in str(e.value) or "or set data.decoder=pyav" in str(e.value)
    # a dataset built by hand is refused by the loader when it would decode on CUDA in workers
    ds = VideoDataset(samples, "", num_frames=8, input_size=32, train=False, decoder="torchcodec-cuda")
    with pytest.raises(UserError, match="set data.workers=0"):
        build_loader(ds, 1, shuffle=False, num_workers=2, seed=0)


@needs_torchcodec
@no_cuda
def test_no_gpu_message_names_what_to_set():
    from ila.data.decode_torchcodec import check_cuda_decoding

    with pytest.raises(UserError, match=r"needs a CUDA GPU and none is visible here; set data\.decoder=torchcodec "
                                        r"\(CPU decoding\) or data\.decoder=pyav"):
        check_cuda_decoding()


def test_decoder_threads_may_change_when_a_run_continues():
    """The frames are the same at any thread count, so a run may resume with another one, and a checkpoint
    saved before the key existed resumes too."""
    from ila.config import load_config
    from ila.engine.train import config_difference

    saved = load_config("tiny").to_dict()
    assert config_difference(saved, load_config("tiny", ["data.decoder_threads=0"]).to_dict()) is None
    del saved["data"]["decoder_threads"]
    assert config_difference(saved, load_config("tiny").to_dict()) is None
    assert config_difference(saved, load_config("tiny", ["data.decoder=torchcodec"]).to_dict()).startswith("data.decoder:")


def test_tensor_frames_take_the_same_path_as_numpy_frames(motion):
    """torchcodec-cuda's reader returns torch tensors (on the GPU) where the others return numpy arrays: the
    training item, pad_collate and the device recipe give the same result for either (here on the CPU, frames
    served from memory by the library's own FramesReader)."""
    import torch

    from ila.data.annotations import Sample
    from ila.data.cache import FramesReader, decode_all
    from ila.data.dataset import VideoDataset
    from ila.data.gpu_augment import DeviceAugment, RawClip, pad_collate

    paths = [str(p) for p in sorted((motion / "train").iterdir()) if p.suffix == ".mp4"][:3]

    class Served(VideoDataset):
        as_tensor = False

        def open(self, path):
            frames = decode_all(path, self.short_side)
            return FramesReader(path, torch.from_numpy(frames) if self.as_tensor else frames)

    batches = []
    for as_tensor in (False, True):
        ds = Served([Sample(p, i) for i, p in enumerate(paths)], "", num_frames=8, input_size=28, train=True,
                    transform=RawClip(28), hflip=True)
        ds.as_tensor = as_tensor
        batch = pad_collate([ds[i] for i in range(3)])
        video, _ = DeviceAugment(28)(batch["video"], batch["size"], batch["label"],
                                     generator=torch.Generator().manual_seed(0))
        batches.append((batch, video))
    (a, va), (b, vb) = batches
    assert a["video"].dtype == torch.uint8 and torch.equal(a["video"], b["video"]) and torch.equal(a["size"], b["size"])
    assert torch.equal(va, vb) and va.shape == (3, 8, 3, 28, 28)


needs_cuda_decoding = pytest.mark.skipif(not (usable and __import__("torch").cuda.is_available()),
                                         reason="needs torchcodec and a CUDA GPU (benchmarks/gpu_data.sh runs this)")


@needs_cuda_decoding
def test_cuda_decoding_gives_the_cpu_frames_on_the_gpu(bframes):
    """GPU sessions only: torchcodec-cuda's frames are CUDA uint8 tensors close to the CPU decoder's (NVDEC's
    colour conversion is not bit-exact), resized on the GPU, and a training batch stays on the GPU."""
    import torch

    from ila.data.annotations import Sample
    from ila.data.dataset import VideoDataset, build_loader
    from ila.data.gpu_augment import DeviceAugment, RawClip, pad_collate

    idx = [30, 3, 17, 47, 0]
    with open_video(bframes, decoder="torchcodec") as cpu, open_video(bframes, decoder="torchcodec-cuda") as gpu:
        assert gpu.num_frames == cpu.num_frames == 48
        full, want = gpu.read(idx), cpu.read(idx).astype(int)
        assert isinstance(full, torch.Tensor) and full.is_cuda and full.dtype == torch.uint8
        diff = np.abs(full.cpu().numpy().astype(int) - want)
        assert full.shape == want.shape and diff.mean() < 3 and diff.mean() < 0.3 * np.abs(want[1:] - want[:-1]).mean()
        small, want = gpu.read(idx, short_side=64), cpu.read(idx, short_side=64).astype(int)
        assert small.is_cuda and small.shape == want.shape and np.abs(small.cpu().numpy().astype(int) - want).mean() < 6
    # (the 160x96 video: the 32x32 motion clips are below NVDEC's smallest H.264 size, 48x16)
    ds = VideoDataset([Sample(bframes, i) for i in range(4)], "", num_frames=8, input_size=28, train=True,
                      transform=RawClip(28), decoder="torchcodec-cuda")
    batch = next(iter(build_loader(ds, 4, shuffle=False, num_workers=0, seed=0, collate_fn=pad_collate)))
    assert batch["video"].is_cuda and batch["video"].dtype == torch.uint8
    video, _ = DeviceAugment(28)(batch["video"], batch["size"], batch["label"].cuda(),
                                 generator=torch.Generator().manual_seed(0))
    assert video.is_cuda and video.shape == (4, 8, 3, 28, 28) and torch.isfinite(video).all()
