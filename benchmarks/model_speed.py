"""Model speed: the straightforward and fast paths (and options) side by side, measured in one run.

    python benchmarks/model_speed.py --preset ila-b32-8f-k400 ila-b16-8f-k400 --batch 2 1 --memory
    python benchmarks/model_speed.py --preset ila-b16-8f-k400 --batch 1 --ablation --skip-train
    python benchmarks/model_speed.py --preset ila-l14-8f-k400 --batch 4 --amp bf16 --compile --grad-checkpointing

Rows: `straight` (FastPath.off(): every equation written out), `fast` (FastPath.on()); with --ablation also the
fast path without each idea and the straightforward path with each idea alone; with --amp the fast path under
autocast; with --compile the fast path through torch.compile. Every row reports ms/clip and clips/s of inference
(eval, no autograd) and of a training step (forward + backward + AdamW step, the release's freezing), the speed
ratio against `straight`, peak memory, and how far its logits are from the straightforward path's (max |diff| /
max |straight|; fp32 rows are the same function, so this is rounding).

Timing: each row is timed `--repeats` times, interleaved with the other rows so all see the same machine load; a
timing is the median of `--iters` calls after `--warmup`; the best of the repeats is reported. Peak memory: on CUDA
torch.cuda.max_memory_allocated per row; on CPU (with --memory) the resident high-water mark of a fresh process
that builds the model and runs just that row (so rows do not share caches), counted from after the model is built. Random weights, with the zero-initialised
alignment outputs given small random values so that the alignment branch reaches the logits; text features cached.
"""
from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import time
from dataclasses import dataclass

import torch

from ila.engine.precision import autocast
from ila.models.fast import FastPath
from ila.models.ila import ILAModel
from ila.presets import get_preset


@dataclass
class Row:
    name: str
    fast: FastPath
    amp: torch.dtype | None = None
    compile: bool = False
    checkpointing: bool = False  # gradient checkpointing (training rows only)


def rows_for(args) -> list[Row]:
    rows = [Row("straight", FastPath.off()), Row("fast", FastPath.on())]
    if args.ablation:
        rows += [Row(f"fast -{idea}", FastPath.parse(f"on,-{idea}")) for idea in FastPath.ideas()]
        rows += [Row(f"straight +{idea}", FastPath.parse(idea)) for idea in FastPath.ideas()]
    if args.amp:
        rows.append(Row(f"fast {args.amp} autocast", FastPath.on(), getattr(torch, {"bf16": "bfloat16",
                                                                                  "fp16": "float16"}[args.amp])))
    if args.compile:
        rows.append(Row("fast compiled", FastPath.on(), compile=True))
        if args.amp:
            rows.append(Row(f"fast {args.amp} compiled", FastPath.on(), rows[-2].amp, compile=True))
    if args.grad_checkpointing:
        rows += [Row(f"{row.name} + checkpointing", row.fast, row.amp, row.compile, True) for row in rows
                 if row.name in ("fast", f"fast {args.amp} autocast")]
    if args.rows:
        unknown = set(args.rows) - {row.name for row in rows}
        if unknown:
            raise SystemExit(f"--rows: no row named {sorted(unknown)}; rows here: {[row.name for row in rows]}")
        rows = [row for row in rows if row.name == "straight" or row.name in args.rows]
    return rows


def build(args, device):
    torch.manual_seed(0)
    cfg = get_preset(args.model)
    cfg.num_frames = args.frames or cfg.num_frames
    if args.temporal:
        cfg.temporal = args.temporal
    model = ILAModel(cfg).to(device)
    with torch.no_grad():  # zero-initialised outputs of the alignment branch: give them values
        for name, p in model.named_parameters():
            if ".temporal_skip" in name or "point_head.temporal.2" in name:
                p.normal_(0, 0.02)
    video = torch.randn(args.batch, cfg.num_frames, 3, cfg.image_resolution, cfg.image_resolution, device=device)
    text = torch.randn(args.classes, cfg.embed_dim, device=device) if cfg.head == "text" else None
    return cfg, model, video, text


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, warmup: int, iters: int, device: torch.device) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


class Runner:
    """Inference and training-step closures for each row, sharing one model (compiled copies cached per row)."""

    def __init__(self, args, device):
        self.args, self.device = args, device
        self.cfg, self.model, self.video, self.text = build(args, device)
        self.compiled = {}
        self.opt = None

    def forward(self, row: Row):
        model = self.model
        model.fast = row.fast
        if row.compile:
            if row.name not in self.compiled:
                self.compiled[row.name] = torch.compile(model)
            model = self.compiled[row.name]
        with autocast(row.amp, self.device):
            return model(self.video, text_features=self.text)

    def inference(self, row: Row):
        self.model.eval()

        def run():
            with torch.inference_mode() if not row.compile else torch.no_grad():
                return self.forward(row).logits.float()
        return run

    def train_step(self, row: Row):
        model = self.model
        if self.opt is None:
            model.train()
            model.set_trainable(full_finetune=not self.cfg.freeze_clip)
            self.opt = torch.optim.AdamW(model.param_groups(), lr=1e-6)
            classes = self.text.shape[0] if self.text is not None else self.cfg.num_classes
            self.target = torch.randint(0, classes, (self.args.batch,), device=self.device)

        def step():
            model.train()
            model.visual.transformer.grad_checkpointing = row.checkpointing
            out = self.forward(row)
            loss = torch.nn.functional.cross_entropy(out.logits.float(), self.target) + out.align_losses.sum()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        return step


def peak_mib(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:  # the resident high-water mark since reset_peak() (Linux)
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> None:
    """Start the resident high-water mark afresh (Linux: writing 5 to clear_refs), so that the peak of a phase is
    not hidden by the model's construction."""
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def memory_in_fresh_process(args, row: str, phase: str) -> float:
    """CPU peak RSS of a new process running only `row`'s `phase` (build, warm-up, one timed call)."""
    argv = ["--preset", args.model, "--batch", str(args.batch), "--classes", str(args.classes),
            "--warmup", str(args.warmup)]
    argv += ["--frames", str(args.frames)] if args.frames else []
    argv += ["--temporal", args.temporal] if args.temporal else []
    argv += ["--threads", str(args.threads)] if args.threads else []
    argv += ["--amp", args.amp] if args.amp else []
    argv += ["--ablation"] * args.ablation + ["--compile"] * args.compile
    argv += ["--grad-checkpointing"] * args.grad_checkpointing
    argv += ["--rows", *args.rows] if args.rows else []
    out = subprocess.run([sys.executable, __file__, *argv, "--device", args.device, "--_memory-of", row, phase],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def measure(runner: Runner, rows: list[Row], phase: str, args, device) -> dict[str, dict]:
    make = runner.inference if phase == "inference" else runner.train_step
    rows = [row for row in rows if phase == "train" or not row.checkpointing]
    fns = {row.name: make(row) for row in rows}
    times = {row.name: [] for row in rows}
    iters = args.iters if phase == "inference" else max(1, args.iters // 2)
    for _ in range(args.repeats):
        for row in rows:
            times[row.name].append(timed(fns[row.name], args.warmup, iters, device))
    results = {}
    for row in rows:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            fns[row.name]()
            mem = peak_mib(device)
        elif args.memory:
            mem = memory_in_fresh_process(args, row.name, phase)
        else:
            mem = float("nan")
        results[row.name] = {"sec": min(times[row.name]), "mem": mem}
    return results


def deviations(runner: Runner, rows: list[Row]) -> dict[str, float]:
    """max |logits - straight logits| / max |straight logits|, eval mode."""
    ref = runner.inference(rows[0])()
    return {row.name: ((runner.inference(row)() - ref).abs().max() / ref.abs().max()).item() for row in rows}


def report(phase, rows, results, dev, batch) -> list[dict]:
    base = results["straight"]["sec"]
    print(f"\n{phase}:")
    print(f"| row | ms/clip | clips/s | vs straight | peak MiB | logits deviation |")
    print("|---|---|---|---|---|---|")
    out = []
    for row in rows:
        r = results[row.name]
        name = row.name.removesuffix(" + checkpointing")
        line = dict(phase=phase, row=row.name, ms_per_clip=r["sec"] / batch * 1000, clips_per_s=batch / r["sec"],
                    ratio=base / r["sec"], peak_mib=r["mem"], deviation=dev.get(name))
        dev_text = "-" if line["deviation"] is None else f"{line['deviation']:.1e}"
        print(f"| {row.name} | {line['ms_per_clip']:.1f} | {line['clips_per_s']:.2f} | {line['ratio']:.2f}x | "
              f"{line['peak_mib']:.0f} | {dev_text} |")
        out.append(line)
    return out


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", nargs="+", default=["ila-b32-8f-k400"], help="one or more presets, one after another")
    p.add_argument("--batch", type=int, nargs="+", default=[2], help="clips per call (one value, or one per preset)")
    p.add_argument("--frames", type=int, default=None)
    p.add_argument("--temporal", default=None, choices=["ila", "mean", "attention", "joint"])
    p.add_argument("--classes", type=int, default=3, help="text classes for a text head (features cached)")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats of each row (best is reported)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--ablation", action="store_true", help="also each idea off in the fast path / alone")
    p.add_argument("--amp", choices=["bf16", "fp16"], default=None, help="also the fast path under autocast")
    p.add_argument("--compile", action="store_true", help="also the fast path through torch.compile")
    p.add_argument("--grad-checkpointing", action="store_true", help="also training steps with gradient checkpointing")
    p.add_argument("--rows", nargs="+", default=None, help="keep only these rows (and `straight`, the reference)")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-inference", action="store_true", help="training steps only (no logits deviation column)")
    p.add_argument("--memory", action="store_true", help="CPU: peak RSS per row, each in a fresh process")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p.add_argument("--_memory-of", nargs=2, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = rows_for(args)
    if len(args.batch) not in (1, len(args.preset)):
        p.error("--batch takes one value or one per preset")
    lines = []
    for args.model, args.batch in zip(args.preset, args.batch * len(args.preset) if len(args.batch) == 1
                                      else args.batch):
        lines += run_preset(args, rows, device)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(lines, f, indent=1)


def run_preset(args, rows: list[Row], device: torch.device) -> list[dict]:
    runner = Runner(args, device)
    if args._memory_of:  # child process of --memory: run one row's phase, print the peak
        name, phase = args._memory_of
        row = next(r for r in rows if r.name == name)
        fn = runner.inference(row) if phase == "inference" else runner.train_step(row)
        reset_peak()
        for _ in range(args.warmup + 1):
            fn()
        print(peak_mib(device))
        return []
    print(f"\n## {args.model}: temporal={runner.cfg.temporal} frames={runner.cfg.num_frames} batch={args.batch} "
          f"device={device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}) "
          f"threads={torch.get_num_threads()} torch={torch.__version__}")
    inference_rows = [row for row in rows if not row.checkpointing]
    lines, dev = [], {}
    if not args.skip_inference:
        dev = deviations(runner, inference_rows)
        lines = report("inference", inference_rows, measure(runner, rows, "inference", args, device), dev,
                       args.batch)
    if not args.skip_train:
        lines += report("training step", rows, measure(runner, rows, "train", args, device), dev, args.batch)
    return [dict(preset=args.model, **line) for line in lines]

if __name__ == "__main__":
    main()
