"""Decoder threads (`data.decoder_threads`): clips per CPU-second and per wall-second of one loader process
(one worker) at 1, 2 and FFmpeg's own thread count (0), for PyAV and torchcodec, on generated H.264 videos.

    python benchmarks/decoder_threads.py                       # 340x256 and 1280x720, 8 frames, ~1 min
    python benchmarks/decoder_threads.py --sizes 340x256 --clips 40

Each row is `VideoDataset` with `data.augment=device` (decode at the recipe's short side, uint8 out: the loader
work that threads can change), the release's segment sampling. CPU-seconds are the process's CPU time, all its
threads included: the cost per clip a many-worker loader pays. Wall-seconds are what one worker alone gets
(latency); on a shared machine they depend on the neighbours, so the 1-minute load average is printed beside
every row. Numbers only.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import av
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.data_speed import cpu_rate, write_video  # noqa: E402
from ila.data.annotations import Sample  # noqa: E402
from ila.data.dataset import VideoDataset  # noqa: E402
from ila.data.decode_torchcodec import torchcodec_available  # noqa: E402
from ila.data.gpu_augment import RawClip  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["340x256", "1280x720"])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--gop", type=int, default=0, help="keyframe interval (0: x264's default, 250)")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--clips", type=int, nargs="+", default=[24, 8], help="clips timed per row, per size")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 0])
    parser.add_argument("--decoders", nargs="+", default=["pyav", "torchcodec"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    decoders = [d for d in args.decoders if d != "torchcodec" or torchcodec_available()[0]]
    print(f"{os.cpu_count()} CPUs (shared with other users: wall-clock rates depend on their load), torch threads 1, "
          f"PyAV {av.__version__}, decoders {', '.join(decoders)}; {args.frames} frames per clip, input size 224")
    with tempfile.TemporaryDirectory() as tmp:
        for n, size_text in enumerate(args.sizes):
            width, height = (int(v) for v in size_text.split("x"))
            path = os.path.join(tmp, f"{size_text}.mp4")
            write_video(path, args.seconds, 30, width, height, args.gop or None, seed=n)
            clips = args.clips[min(n, len(args.clips) - 1)]
            print(f"\n{size_text}, {args.seconds:g} s at 30 fps, keyframe every {args.gop or 250}; {clips} clips per row")
            print(f"{'decoder':<11} {'threads':>7} {'clips/CPU-s':>11} {'clips/wall-s':>12} {'load (1 min)':>12}")
            for decoder in decoders:
                for threads in args.threads:
                    ds = VideoDataset([Sample(path, 0)] * (clips + 1), "", num_frames=args.frames, input_size=224, train=True,
                                      transform=RawClip(224), decoder=decoder, decoder_threads=threads)  # item i: draw i
                    per_cpu, per_wall = cpu_rate(lambda i: ds[i], clips)
                    label = "auto (0)" if threads == 0 else str(threads)
                    print(f"{decoder:<11} {label:>7} {per_cpu:>11.1f} {per_wall:>12.1f} {os.getloadavg()[0]:>12.2f}",
                          flush=True)
    print(f"\nfinished {time.strftime('%H:%M:%S')}")


if __name__ == "__main__":
    main()
