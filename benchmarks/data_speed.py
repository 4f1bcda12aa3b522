"""Clips per second of decode + augment (the training recipe) at 8 and 16 frames, against decoding every
frame sequentially, on generated 640x480 30 fps 10 s H.264 videos written to a temp dir.

    python benchmarks/data_speed.py                 # x264's default keyframe interval (250 frames)
    python benchmarks/data_speed.py --gop 30        # a keyframe every second
    python benchmarks/data_speed.py --workers 2     # also through the DataLoader with worker processes

Methods, all ending in the same `TrainTransform` at --size:
- ila: `VideoDataset` (seek to the keyframe before each wanted run, decode to the last wanted frame,
  convert only wanted frames, resized to the recipe's short side while converting);
- sequential, all to RGB: decode every frame and convert every frame to RGB (as read-whole-video
  loaders do), then take the sampled frames;
- sequential, wanted to RGB: decode every frame, convert only the sampled ones.
Both clips per wall-clock second and per CPU second of this process are printed (the second is
steadier on a shared machine; worker processes are not in it). Numbers only, no assertions.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import av
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ila.data.annotations import Sample  # noqa: E402
from ila.data.dataset import VideoDataset, build_loader  # noqa: E402
from ila.data.sampling import item_rng, segment_indices  # noqa: E402
from ila.data.transforms import TrainTransform  # noqa: E402


def write_video(path: str, seconds: float, fps: int, width: int, height: int, gop: int | None, seed: int) -> None:
    """A panning textured scene with moving blocks: real motion and detail for the encoder."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 16 + 2, (width + 8 * int(seconds * fps)) // 16 + 2, 3), np.uint8)
    scene = np.kron(coarse, np.ones((16, 16, 1), np.uint8))
    noise = rng.integers(0, 40, scene.shape, np.uint8)
    scene = scene // 2 + noise
    options = {"preset": "veryfast", "crf": "23"}
    if gop:
        options.update(g=str(gop), keyint_min=str(gop))
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for k in range(int(seconds * fps)):
            frame = scene[:height, 8 * k: 8 * k + width].copy()
            y, x = (k * 5) % (height - 60), (k * 11) % (width - 60)
            frame[y:y + 60, x:x + 60] = (255, 255 - k % 256, 0)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def sequential_clip(path: str, num_frames: int, transform, rng, convert_all: bool) -> torch.Tensor:
    """The baseline: decode the whole video from the start, then sample and augment."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
    wanted = segment_indices(len(frames), num_frames, True, rng)
    if convert_all:
        rgb = [f.to_ndarray(format="rgb24") for f in frames]
        clip = np.stack([rgb[i] for i in wanted])
    else:
        clip = np.stack([frames[i].to_ndarray(format="rgb24") for i in wanted])
    return transform(torch.from_numpy(clip).permute(0, 3, 1, 2))


def rate(fn, count: int) -> tuple[float, float]:
    """(clips per wall-clock second, clips per CPU second of this process)."""
    fn(0)                                           # warm-up (codec set-up, allocations)
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(count):
        fn(i)
    return count / (time.perf_counter() - wall), count / (time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--gop", type=int, default=None, help="keyframe interval (default: x264's, 250)")
    parser.add_argument("--size", type=int, default=224, help="input size S of the recipe")
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--clips", type=int, default=12, help="clips timed per method")
    parser.add_argument("--workers", type=int, default=0, help="also time a DataLoader with this many workers")
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        paths = []
        for v in range(args.videos):
            paths.append(os.path.join(tmp, f"video{v}.mp4"))
            write_video(paths[-1], args.seconds, args.fps, args.width, args.height, args.gop, seed=v)
        with av.open(paths[0]) as c:
            keys = sum(p.is_keyframe for p in c.demux(c.streams.video[0]))
        print(f"{args.videos} videos, {args.width}x{args.height}, {args.fps} fps, {args.seconds:g} s, "
              f"{keys} keyframe(s) each (gop {args.gop or 'x264 default'}), written in "
              f"{time.perf_counter() - start:.1f} s; {os.cpu_count()} CPUs, torch threads 1, input size {args.size}")
        samples = [Sample(p, 0) for p in paths]
        transform = TrainTransform(args.size)
        print(f"{'':>6}  {'':<30} {'wall clock':^18}   {'CPU of this process':^18}")
        print(f"{'frames':>6}  {'method':<30} {'clips/s':>8}  {'speed-up':>8}   {'clips/s':>8}  {'speed-up':>8}")
        for t in args.frames:
            ds = VideoDataset(samples, "", num_frames=t, input_size=args.size, train=True)
            results = {
                "ila VideoDataset (seek)": rate(lambda i: ds[i % len(paths)], args.clips),
                "sequential, all to RGB": rate(lambda i: sequential_clip(
                    paths[i % len(paths)], t, transform, item_rng(0, 0, i), True), args.clips),
                "sequential, wanted to RGB": rate(lambda i: sequential_clip(
                    paths[i % len(paths)], t, transform, item_rng(0, 0, i), False), args.clips),
            }
            if args.workers:
                loader = build_loader(VideoDataset(samples * args.clips, "", t, args.size, train=True),
                                      batch_size=4, shuffle=True, num_workers=args.workers, seed=0)
                next(iter(loader))
                begin = time.perf_counter()
                count = sum(len(b["label"]) for b in loader)
                results[f"ila DataLoader, {args.workers} workers"] = (count / (time.perf_counter() - begin), None)
            base = results["sequential, all to RGB"]
            for name, (wall, cpu) in results.items():
                cpu_text = f"{cpu:>8.2f}  {cpu / base[1]:>7.2f}x" if cpu else f"{'-':>8}  {'-':>8}"
                print(f"{t:>6}  {name:<30} {wall:>8.2f}  {wall / base[0]:>7.2f}x   {cpu_text}")


if __name__ == "__main__":
    main()
