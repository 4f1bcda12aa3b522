"""Clips per CPU-second of loader work, side by side in one run: today's path, the device-augmentation path,
torchcodec, decord; 8 and 16 frames; generated H.264 videos at the sizes and keyframe intervals asked for.

    python benchmarks/data_speed.py                                   # 340x256 and 1280x720, gop 250 and 16
    python benchmarks/data_speed.py --sizes 340x256 --gops 250 --frames 8 --clips 40

CPU-seconds are this process's CPU time (`time.process_time`: all its threads, decoder threads included), so
the figure is meaningful on a shared machine, where wall-clock time depends on the neighbours: a loader worker
costs the same CPU time per clip whatever else runs, and a machine with N free cores feeds N times the rate.
Every decoder runs with one thread (throughput per core is what a many-worker loader gets).

Methods (all sample frames with the release's segment sampling, from `item_rng`):
- today: `VideoDataset` as trained so far (`data.augment=cpu`): PyAV seek + decode, resized to the recipe's
  short side in FFmpeg's scaler while converting to RGB, then `TrainTransform` on the CPU in the worker;
- new: `VideoDataset` with `data.augment=device`: the same decoding, uint8 clips out, no augmentation in the
  worker. The recipe (`DeviceAugment`, batch 16) is timed separately on this CPU; on a GPU it runs on the device;
- torchcodec: as new, decoded by torchcodec (`data.decoder=torchcodec`);
- decord: decord 0.6.0 (the authors' loader) reading the same frames, resized in its decoder; uint8 out, so
  comparable with new (install it for the benchmark only: `pip install decord==0.6.0`);
- torchcodec-cuda (only where a GPU and torchcodec are): `data.decoder=torchcodec-cuda`, decoded on the GPU in
  this process (as training does it: `data.workers=0`), resized there, uint8 CUDA clips out. Its CPU-seconds are
  this process's (demuxing, seeking, launching); its wall-clock rate is what the one training process gets.
Numbers only, no assertions. The cores needed to feed a GPU = its clips/s / (clips per CPU-second).
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
from ila.data.dataset import VideoDataset  # noqa: E402
from ila.data.gpu_augment import DeviceAugment, RawClip, pad_collate  # noqa: E402
from ila.data.sampling import item_rng, segment_indices  # noqa: E402
from ila.data.transforms import resize_short_side  # noqa: E402
from ila.errors import UserError  # noqa: E402

# H200 training rates, README's GPU table: ILA-B/16 8f, bf16, compiled: 4.5 ms/clip. B/32 has no H200 row; the
# issue's "about three times faster" is used for it and printed as an estimate.
GPU_RATES = {"ILA-B/16 8f (H200, 4.5 ms/clip, README)": 1000 / 4.5,
             "ILA-B/32 8f (estimate: 3x B/16, not measured)": 3 * 1000 / 4.5}


def write_video(path: str, seconds: float, fps: int, width: int, height: int, gop: int | None, seed: int) -> None:
    """A panning textured scene with a moving block: real motion and detail for the encoder."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 16 + 2, (width + 8 * int(seconds * fps)) // 16 + 2, 3), np.uint8)
    scene = np.kron(coarse, np.ones((16, 16, 1), np.uint8))
    scene = scene // 2 + rng.integers(0, 40, scene.shape, np.uint8)
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


def cpu_rate(fn, count: int) -> tuple[float, float]:
    """(clips per CPU-second of this process, clips per wall-clock second)."""
    fn(0)                                           # warm-up (codec set-up, allocations)
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(1, count + 1):
        fn(i)
    return count / (time.process_time() - cpu), count / (time.perf_counter() - wall)


def decord_clip(paths, num_frames: int, size: int):
    """A reader with decord: resized in its decoder to the recipe's short side, uint8 (T, H, W, 3)."""
    import decord

    short = resize_short_side(size)

    def read(i):
        path = paths[i % len(paths)]
        probe = decord.VideoReader(path, num_threads=1)
        h, w = probe[0].shape[:2]
        del probe
        scale = short / min(h, w)
        vr = decord.VideoReader(path, width=round(w * scale), height=round(h * scale), num_threads=1)
        idx = segment_indices(len(vr), num_frames, True, item_rng(0, 0, i))
        return vr.get_batch(idx.tolist()).asnumpy()
    return read


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--sizes", nargs="+", default=["340x256", "1280x720"])
    parser.add_argument("--gops", type=int, nargs="+", default=[250, 16], help="keyframe intervals (250: x264's default)")
    parser.add_argument("--size", type=int, default=224, help="input size S of the recipe")
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--clips", type=int, default=24, help="clips timed per method")
    parser.add_argument("--methods", nargs="+", default=["today", "new", "torchcodec", "decord", "torchcodec-cuda"])
    parser.add_argument("--augment-device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the device recipe is timed (wall clock per clip, batch 16)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from ila.data.decode_torchcodec import torchcodec_available
    try:
        import decord  # noqa: F401
        has_decord = True
    except ImportError:
        has_decord = False
    print(f"{os.cpu_count()} CPUs (shared), torch threads 1, decoder threads 1, input size {args.size}; "
          f"torch {torch.__version__}, PyAV {av.__version__}; torchcodec: "
          f"{'yes' if torchcodec_available()[0] else torchcodec_available()[1]}; decord: {'yes' if has_decord else 'no'}; "
          f"CUDA: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'no (no torchcodec-cuda row)'}")
    aug = DeviceAugment(args.size)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size_text in args.sizes:
            width, height = (int(v) for v in size_text.split("x"))
            for gop in args.gops:
                start = time.perf_counter()
                paths = []
                for v in range(args.videos):
                    paths.append(os.path.join(tmp, f"{width}x{height}_g{gop}_{v}.mp4"))
                    write_video(paths[-1], args.seconds, args.fps, width, height, gop, seed=v)
                print(f"\n{args.videos} videos {width}x{height}, {args.fps} fps, {args.seconds:g} s, keyframe every "
                      f"{gop} frames (written in {time.perf_counter() - start:.0f} s)")
                print(f"{'frames':>6}  {'method':<40} {'clips/CPU-s':>11} {'vs today':>9} {'clips/wall-s':>12}")
                samples = [Sample(p, 0) for p in paths]
                for t in args.frames:
                    results = {}
                    if "today" in args.methods:
                        ds = VideoDataset(samples, "", num_frames=t, input_size=args.size, train=True)
                        results["today (PyAV + CPU recipe)"] = cpu_rate(lambda i: ds[i % len(paths)], args.clips)
                    if "new" in args.methods:
                        ds = VideoDataset(samples, "", num_frames=t, input_size=args.size, train=True,
                                          transform=RawClip(args.size))
                        results["new (PyAV, uint8 out)"] = cpu_rate(lambda i: ds[i % len(paths)], args.clips)
                        batch = pad_collate([ds[i % len(paths)] for i in range(16)])
                        g = torch.Generator().manual_seed(0)
                        video = batch["video"].to(args.augment_device)
                        sync = torch.cuda.synchronize if video.is_cuda else (lambda: None)
                        clock = time.perf_counter if video.is_cuda else time.process_time    # GPU: wall; CPU: CPU
                        aug(video, batch["size"], generator=g)
                        sync()
                        begin = clock()
                        for _ in range(3):
                            aug(video, batch["size"], generator=g)
                        sync()
                        aug_ms = (clock() - begin) / (3 * 16) * 1000
                    if "torchcodec" in args.methods and torchcodec_available()[0]:
                        ds = VideoDataset(samples, "", num_frames=t, input_size=args.size, train=True,
                                          transform=RawClip(args.size), decoder="torchcodec")
                        results["torchcodec (uint8 out)"] = cpu_rate(lambda i: ds[i % len(paths)], args.clips)
                    if "torchcodec-cuda" in args.methods and torchcodec_available()[0] and torch.cuda.is_available():
                        ds = VideoDataset(samples, "", num_frames=t, input_size=args.size, train=True,
                                          transform=RawClip(args.size), decoder="torchcodec-cuda")

                        def on_gpu(i):
                            clip = ds[i % len(paths)]["video"]
                            torch.cuda.synchronize()
                            return clip
                        try:
                            results["torchcodec-cuda (GPU decode, 1 process)"] = cpu_rate(on_gpu, args.clips)
                        except UserError as e:                 # e.g. a torchcodec build without CUDA
                            print(f"torchcodec-cuda left out: {e}")
                    if "decord" in args.methods and has_decord:
                        results["decord 0.6.0 (uint8 out)"] = cpu_rate(decord_clip(paths, t, args.size), args.clips)
                    base = results.get("today (PyAV + CPU recipe)", (None,))[0]
                    for name, (per_cpu, per_wall) in sorted(results.items(), key=lambda kv: "cuda" in kv[0]):
                        ratio = f"{per_cpu / base:>8.2f}x" if base else f"{'-':>9}"
                        print(f"{t:>6}  {name:<40} {per_cpu:>11.1f} {ratio} {per_wall:>12.1f}")
                        rows.append((size_text, gop, t, name, per_cpu))
                    if "new" in args.methods:
                        print(f"{t:>6}  {'  device recipe on ' + args.augment_device:<40} {aug_ms:>8.1f} ms/clip "
                              f"({'wall' if args.augment_device != 'cpu' else 'CPU'}, batch 16; not in the loader's count)")
    print("\nCPU cores needed to feed the GPU (its clips/s / clips per CPU-second), 8 frames:")
    for size_text, gop, t, name, per_cpu in rows:
        if t == 8:
            need = ", ".join(f"{label.split(' (')[0]} {rate / per_cpu:.0f}" for label, rate in GPU_RATES.items())
            print(f"  {size_text} gop {gop:>3}  {name:<40} {need}")
    print("  rates: " + "; ".join(f"{k} = {v:.0f} clips/s" for k, v in GPU_RATES.items()))


if __name__ == "__main__":
    main()
