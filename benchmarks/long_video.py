"""`ila predict --window` on long videos: windows per second and peak memory, for a 1-minute and a 10-minute
640x360 30 fps H.264 video (generated motion segments, a keyframe every 2 s), each scored in a fresh process.

    python benchmarks/long_video.py                              # demo preset (random weights), 8 s windows every 4 s
    python benchmarks/long_video.py --preset ila-b32-8f-k400 --minutes 1
    python benchmarks/long_video.py --window 4 --stride 2 --keep /tmp/long   # keep the videos for reuse

Peak memory is the child process's resident high-water mark (VmHWM, reset through /proc/self/clear_refs once the
model is loaded) after all windows, next to the resident size at that reset; flat memory means the growth does not
scale with the video's length.
Numbers only, no assertions.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def vm_hwm_mib() -> float:
    """This process's resident high-water mark (VmHWM) in MiB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def child(args) -> None:
    """Score one video's windows in this process; print one JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    from ila.engine.session import InferenceSession

    predictor = InferenceSession(args.checkpoint, overrides=["device=cpu"])
    # reset the high-water mark (a child's ru_maxrss starts at its parent's peak, and imports peak too)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = vm_hwm_mib()                              # = the resident size now, before any window
    start = time.perf_counter()
    result = predictor.windows(args.video, args.window, args.stride, topk=1)
    seconds = time.perf_counter() - start
    peak = vm_hwm_mib()
    print(json.dumps({"windows": len(result["windows"]), "seconds": seconds, "duration": result["duration"],
                      "peak_before_mib": base, "peak_mib": peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 10])
    parser.add_argument("--window", type=float, default=8.0)
    parser.add_argument("--stride", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", help="folder for the generated videos (reused when present)")
    parser.add_argument("--child", nargs=2, metavar=("CHECKPOINT", "VIDEO"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.checkpoint, args.video = args.child
        return child(args)

    from ila.config import load_config
    from ila.data.synthetic import write_long_video
    from ila.engine.checkpoint import save_checkpoint
    from ila.models import build_model

    folder = args.keep or tempfile.mkdtemp(prefix="ila-long-")
    os.makedirs(folder, exist_ok=True)
    cfg = load_config(args.preset, ["model.num_classes=8"] if load_config(args.preset).model.head == "classifier" else [])
    checkpoint = os.path.join(folder, f"{args.preset}.pt")
    save_checkpoint(checkpoint, build_model(cfg.model), cfg, [f"class {i}" for i in range(8)])
    print(f"preset {args.preset} ({cfg.data.num_frames} frames x {cfg.data.input_size} px, random weights), "
          f"windows of {args.window:g} s every {args.stride:g} s, {args.threads} threads, torch CPU")
    print("| video | windows | windows/s | RSS before the windows (MiB) | peak RSS (MiB) | growth (MiB) |")
    print("|---|---|---|---|---|---|")
    for minutes in args.minutes:
        video = os.path.join(folder, f"long_{minutes:g}min_640x360.mp4")
        if not os.path.isfile(video):
            start = time.perf_counter()
            segments = int(minutes * 60 / 5)
            write_long_video(video, [k % 8 for k in range(segments)], 5.0, size=(640, 360), fps=30)
            print(f"(wrote {video}: {os.path.getsize(video) / 2**20:.1f} MiB in {time.perf_counter() - start:.0f} s)",
                  file=sys.stderr)
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", checkpoint, video,
                              "--window", str(args.window), "--stride", str(args.stride), "--threads", str(args.threads)],
                             check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        r = json.loads(out)
        print(f"| {minutes:g} min ({r['duration']:.0f} s) 640x360 30 fps | {r['windows']} | "
              f"{r['windows'] / r['seconds']:.1f} | {r['peak_before_mib']:.0f} | {r['peak_mib']:.0f} | "
              f"{r['peak_mib'] - r['peak_before_mib']:.0f} |")


if __name__ == "__main__":
    main()
