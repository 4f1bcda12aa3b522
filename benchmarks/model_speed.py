"""Model speed: clips/s and peak memory of inference and of a training step (forward + backward + AdamW step).

    python benchmarks/model_speed.py --preset ila-b32-8f-k400 --batch 2 --frames 8
    python benchmarks/model_speed.py --preset demo --temporal mean

Random weights (speed does not depend on their values), random input, text features cached for text heads.
CPU peak memory is the process's resident high-water mark (ru_maxrss) after each phase, so phases are run in
order of increasing memory (inference first); on CUDA it is torch.cuda.max_memory_allocated per phase.
"""
from __future__ import annotations

import argparse
import resource
import time

import torch

from ila.models.ila import ILAModel
from ila.presets import get_preset


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn, warmup: int, iters: int, device: torch.device) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def build(args, device):
    cfg = get_preset(args.preset)
    cfg.num_frames = args.frames or cfg.num_frames
    if args.temporal:
        cfg.temporal = args.temporal
    cfg.grad_checkpointing = args.grad_checkpointing
    model = ILAModel(cfg).to(device)
    video = torch.randn(args.batch, cfg.num_frames, 3, cfg.image_resolution, cfg.image_resolution, device=device)
    text = torch.randn(args.classes, cfg.embed_dim, device=device) if cfg.head == "text" else None
    return cfg, model, video, text


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="ila-b32-8f-k400")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--frames", type=int, default=None)
    p.add_argument("--temporal", default=None, choices=["ila", "mean", "attention"])
    p.add_argument("--classes", type=int, default=3, help="text classes for a text head (features cached)")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--path", default="both", choices=["both", "straight", "fast"],
                   help="straight: the plain forward; fast: folded BatchNorm/projections (same outputs)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats of each path (min is reported)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg, model, video, text = build(args, device)
    print(f"{args.preset} temporal={cfg.temporal} frames={cfg.num_frames} batch={args.batch} device={device} "
          f"threads={torch.get_num_threads()} torch={torch.__version__}")

    model.eval()
    paths = {"straight": False, "fast": True} if args.path == "both" else {args.path: args.path == "fast"}
    with torch.inference_mode():
        compare("inference", lambda: model(video, text_features=text), model, paths, args.repeats, args.warmup,
                args.iters, args.batch, device)
    if args.skip_train:
        return
    model.train()
    model.set_trainable(full_finetune=not cfg.freeze_clip)
    opt = torch.optim.AdamW(model.param_groups(), lr=1e-4)
    target = torch.randint(0, text.shape[0] if text is not None else cfg.num_classes, (args.batch,), device=device)

    def step():
        out = model(video, text_features=text)
        loss = torch.nn.functional.cross_entropy(out.logits, target) + out.align_losses.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    compare("train step", step, model, paths, args.repeats if len(paths) == 2 else 1, 1, max(1, args.iters // 2),
            args.batch, device)


def compare(label, fn, model, paths, repeats, warmup, iters, batch, device) -> None:
    """Time `fn` for each path, repeats interleaved so that every path sees the same machine load; best of repeats."""
    times = {name: [] for name in paths}
    for _ in range(repeats):
        for name, fast in paths.items():
            model.fast = fast
            times[name].append(timed(fn, warmup, iters, device))
    for name, secs in times.items():
        sec = min(secs)
        print(f"{label} [{name:8s}]: {batch / sec:8.2f} clips/s  ({sec / batch * 1000:8.1f} ms/clip)  "
              f"peak {peak_memory_mb(device):8.0f} MiB")
    if len(times) == 2:
        print(f"{label} fast/straight speed ratio: {min(times['straight']) / min(times['fast']):.2f}x")

if __name__ == "__main__":
    main()
