"""Model speed: the training model and the fused inference model (`ila.fuse`) side by side, measured in one run.

    python benchmarks/model_speed.py --preset ila-b32-8f-k400 ila-b16-8f-k400 --batch 2 1 --memory
    python benchmarks/model_speed.py --preset ila-b16-8f-k400 --batch 1 --ablation --skip-train
    python benchmarks/model_speed.py --preset ila-b32-8f-k400 --release-src ../ILA      # + the authors' code
    python benchmarks/model_speed.py --preset ila-l14-8f-k400 --batch 4 --amp bf16 --compile --grad-checkpointing
    python benchmarks/model_speed.py --preset ila-b32-8f-k400 ila-b16-8f-k400 --batch 1 --skip-train \
        --precision bf16 int8 --matmul --release-src ../ILA          # inference precisions (issue 24)

Rows: `unfused` (the one training/evaluation forward, in eval mode for inference; the training step), `fused`
(`ila.fuse(model)`, inference only); with --ablation also the fused model without each rewrite (`fused -X`) and
with each rewrite alone (`fused only X`); with --amp the unfused model under autocast; with --compile the unfused
model through torch.compile; with --baseline-src DIR ila's model from another checkout (today's main, say) on the same weights, unfused and fused
by that checkout's own `fuse`; with
--release-src DIR the authors' published model (their `models/xclip.py`, from a
checkout of github.com/Francis-Rings/ILA in DIR; it needs einops, ftfy and regex) on identical weights, in eval
mode with their alignment's `is_training` flag off for inference (their forward switches itself to train mode
after caching the text features, so the row sets eval mode before each pass) and with ila's freezing for its training step. Every row reports ms/clip and
clips/s of inference (no autograd) and of a training step (forward + backward + AdamW step, the release's
freezing), the speed ratio against `unfused`, peak memory, and how far its logits are from the unfused model's
(max |diff| / max |unfused|; fp32 rows compute the same function, so this is rounding).

Precision (`--precision bf16 int8`): `fused bf16` is `ila.fuse(model, precision="bf16")` (what `--precision bf16`
runs); `fused int8` is measured here only, not offered by ila: the fused fp32 model with every linear (the MLPs,
the attention projections, the alignment's linears) as a dynamically quantized int8 linear (torch.ao's
`quantized::linear_dynamic`, x86 engine: int8 weights per output channel, activations quantized per call).
`--matmul`: a bare 800x768x3072 matmul in fp32 and bf16 (oneDNN), timed between the rows, the hardware's limit
the GFLOP/s column compares against (each row's FLOPs: torch's FLOP counter on the unfused model).

Timing (`--timer cpu`: process CPU time instead of wall time, for a loaded machine; use it with --threads 1, where
no OpenMP thread spins while it waits): each row is timed `--repeats` times, interleaved with the other rows so all see the same machine load; a
timing is the median of `--iters` calls after `--warmup`; the best of the repeats is reported. Compare rows
within one run: on a shared machine absolute times move between runs far more than ratios within one. Peak memory:
on CUDA torch.cuda.max_memory_allocated per row; on CPU (with --memory) the resident high-water mark of a fresh
process that builds the model and runs just that row (so rows do not share caches), counted from after the model
is built. Random weights, with the zero-initialised alignment outputs given small random values so that the
alignment branch reaches the logits; text features cached.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import logging
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass

import torch

from ila.engine.precision import autocast
from ila.models.fuse import FUSIONS
from ila.models.ila import ILAModel
from ila.models.registry import temporal_variants
from ila.models.release import ila_to_release
from ila.presets import get_preset


@dataclass
class Row:
    name: str
    fused: tuple[str, ...] | None = None  # None: the unfused model; else the fusions left out (ablation)
    amp: torch.dtype | None = None
    compile: bool = False
    checkpointing: bool = False  # gradient checkpointing (training rows only)
    release: bool = False        # the authors' model (--release-src)
    baseline: bool = False       # ila's model from another checkout (--baseline-src)
    baseline_fast: str | None = None  # its FastPath setting, for checkouts from before ila.fuse (--baseline-fast)
    precision: str = "fp32"      # a fused row's precision (--precision): fp32, bf16, or int8 (measured here only)
    matmul: torch.dtype | None = None  # a bare matmul row (--matmul), not a model

    @property
    def trains(self) -> bool:
        return self.fused is None

    @property
    def other(self) -> bool:
        return self.release or self.baseline


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def rows_for(args) -> list[Row]:
    rows = [Row("unfused"), Row("fused", ())]
    rows += [Row(f"fused {p}", (), precision=p) for p in args.precision if p != "fp32"
             and not (p == "int8" and args.device.startswith("cuda"))]   # the int8 row: x86 CPU kernels only
    if args.compile and "bf16" in args.precision:
        rows.append(Row("fused bf16 compiled", (), compile=True, precision="bf16"))
    if args.ablation:
        rows += [Row(f"fused -{name}", (name,)) for name in FUSIONS]
        rows += [Row(f"fused only {name}", tuple(n for n in FUSIONS if n != name)) for name in FUSIONS]
    if args.release_src:
        rows.append(Row("authors' code", release=True))
        if args.release_amp:   # the authors' mixed precision (their apex O1 on GPU: fp16 autocast)
            rows.append(Row(f"authors' code {args.release_amp} autocast", amp=DTYPES[args.release_amp], release=True))
    if args.baseline_src:
        rows += ([Row(f"baseline fast={spec}", baseline=True, baseline_fast=spec) for spec in args.baseline_fast]
                 if args.baseline_fast else [Row("baseline checkout", baseline=True),
                                             Row("baseline fused", (), baseline=True)])
    if args.amp:
        rows.append(Row(f"unfused {args.amp} autocast", None, DTYPES[args.amp]))
    if args.compile:
        rows.append(Row("unfused compiled", compile=True))
        if args.amp:
            rows.append(Row(f"unfused {args.amp} compiled", None, rows[-2].amp, compile=True))
    if args.grad_checkpointing:
        rows += [Row(f"{row.name} + checkpointing", row.fused, row.amp, row.compile, True) for row in rows
                 if row.name in ("unfused", f"unfused {args.amp} autocast")]
    if args.matmul:
        rows += [Row("bare fp32 matmul", None, matmul=torch.float32), Row("bare bf16 matmul", None,
                                                                           matmul=torch.bfloat16)]
    if args.rows:
        unknown = set(args.rows) - {row.name for row in rows}
        if unknown:
            raise SystemExit(f"--rows: no row named {sorted(unknown)}; rows here: {[row.name for row in rows]}")
        rows = [row for row in rows if row.name == "unfused" or row.name in args.rows]
    return rows


def baseline_model(args, model: ILAModel) -> torch.nn.Module:
    """`model`'s weights in the ILAModel of another ila checkout (e.g. a worktree of an older commit), imported
    beside this one: its `ila` modules are loaded under their usual names, kept by the model, then unlisted."""
    src = os.path.abspath(args.baseline_src)
    if not os.path.isfile(os.path.join(src, "ila", "models", "ila.py")):
        raise SystemExit(f"--baseline-src {src}: no ila/models/ila.py there (an ila checkout)")
    ours = {k: sys.modules.pop(k) for k in list(sys.modules) if k == "ila" or k.startswith("ila.")}
    sys.path.insert(0, src)
    try:
        from ila.models.config import ModelConfig as BaselineConfig
        from ila.models.ila import ILAModel as Baseline
        other = Baseline(BaselineConfig.from_dict(model.cfg.to_dict()))
    finally:
        sys.path.remove(src)
        for k in [k for k in sys.modules if k == "ila" or k.startswith("ila.")]:
            del sys.modules[k]
        sys.modules.update(ours)
    other.load_state_dict(model.state_dict())
    for (_, p), q in zip(model.named_parameters(), other.parameters()):
        q.requires_grad = p.requires_grad
    return other


def release_model(args, cfg, model: ILAModel, text: torch.Tensor | None):
    """The authors' model from their source folder, with `model`'s weights and freezing."""
    if cfg.head != "text" or cfg.temporal != "ila":
        raise SystemExit("--release-src: the authors' Kinetics model has a text head and temporal=ila")
    src = os.path.abspath(args.release_src)
    if not os.path.isfile(os.path.join(src, "models", "xclip.py")):
        raise SystemExit(f"--release-src {src}: no models/xclip.py there (a checkout of Francis-Rings/ILA)")
    sys.path.insert(0, src)
    try:
        import clip  # noqa: F401  (their package order: clip first, it imports models.xclip)
        from models.xclip import build_model as build_release
    except ImportError as e:
        raise SystemExit(f"--release-src {src}: cannot import the authors' model ({e}); it needs their whole "
                         f"checkout and einops, ftfy and regex installed") from None
    finally:
        sys.path.remove(src)
    state = ila_to_release(model.state_dict(), cfg.interactive_block)
    release = build_release({k: v.clone() for k, v in state.items()}, T=cfg.num_frames,
                            logger=logging.getLogger("release"), prompts_alpha=cfg.prompts_alpha,
                            prompts_layers=cfg.prompts_layers, mit_layers=cfg.mit_layers)
    missing = set(state) - set(release.state_dict())
    if missing:
        raise SystemExit(f"--release-src: the authors' model lacks {sorted(missing)[:3]}")
    trainable = ila_to_release({n: p.requires_grad for n, p in model.named_parameters()}, cfg.interactive_block)
    for name, p in release.named_parameters():
        p.requires_grad = trainable.get(name, False)
    release.cache_text_features = text
    return release


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
    model.set_trainable(full_finetune=not cfg.freeze_clip)
    video = torch.randn(args.batch, cfg.num_frames, 3, cfg.image_resolution, cfg.image_resolution, device=device)
    text = torch.randn(args.classes, cfg.embed_dim, device=device) if cfg.head == "text" else None
    return cfg, model, video, text


MATMUL = (800, 768, 3072)  # tokens x width x MLP width: a B/32 clip's MLP


class Int8Linear(torch.nn.Module):
    """A FusedLinear (`act(x W^T + b) + residual`) as a dynamically quantized int8 linear (torch.ao's x86
    `quantized::linear_dynamic`; the int8 row only, not an ila option)."""

    def __init__(self, weight: torch.Tensor, bias, act=None):
        super().__init__()
        w = torch.quantize_per_channel(weight.float(), *self.scales(weight), 0, torch.qint8)
        self.packed = torch.ops.quantized.linear_prepack(w, None if bias is None else bias.float())
        self.act = act

    @staticmethod
    def scales(weight):
        scale = weight.abs().amax(1).clamp_min(1e-8) / 127
        return scale.double(), torch.zeros(weight.shape[0], dtype=torch.long)

    def forward(self, x, residual=None):
        out = torch.ops.quantized.linear_dynamic(x.reshape(-1, x.shape[-1]), self.packed, True)
        out = out.view(*x.shape[:-1], -1)
        out = {"silu": torch.nn.functional.silu, "relu": torch.relu, "tanh": torch.tanh}.get(self.act, lambda y: y)(out)
        return out if residual is None else residual + out


def int8_linears(model: torch.nn.Module) -> torch.nn.Module:
    """Every linear of a fused fp32 model (FusedLinear, and FusedAttention's packed q/k/v) as an Int8Linear."""
    from ila.models.fuse import FusedAttention, FusedLinear
    torch.backends.quantized.engine = "x86"
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, FusedLinear):
                setattr(module, name, Int8Linear(child.weight, child.bias, child.act))
        if isinstance(module, FusedAttention):
            width = module.in_proj_weight.shape[1]
            parts = [Int8Linear(module.in_proj_weight[r], module.in_proj_bias[r])
                     for r in (slice(None), slice(0, width), slice(width, None))]
            module.int8 = {(None, None): parts[0], (0, width): parts[1], (width, None): parts[2]}
            module.in_proj = (lambda m: lambda x, rows: m.int8[(rows.start, rows.stop)](x))(module)
    return model


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, warmup: int, iters: int, device: torch.device, clock=time.perf_counter) -> float:
    """Median seconds per call (`clock`: wall time, or process CPU time with --timer cpu)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        sync(device)
        start = clock()
        fn()
        sync(device)
        times.append(clock() - start)
    return sorted(times)[len(times) // 2]


class Runner:
    """Inference and training-step closures for each row: one unfused model, fused copies and the authors' model
    built from its weights (compiled copies cached per row)."""

    def __init__(self, args, device, rows: list[Row]):
        self.args, self.device = args, device
        self.cfg, self.model, self.video, self.text = build(args, device)
        self.fused = {(row.fused, row.precision): self.fuse(row) for row in rows if row.fused is not None}
        self.release = next((release_model(args, self.cfg, self.model, self.text).to(device)
                             for row in rows if row.release), None)
        self.baseline = next((baseline_model(args, self.model).to(device) for row in rows if row.baseline), None)
        self.baseline_fused = next((copy.deepcopy(self.baseline).fuse() for row in rows
                                    if row.baseline and row.fused is not None), None)   # its own ila.fuse
        for spec in args.baseline_fast or ():  # checked once here, not in the timed loop
            if not hasattr(self.baseline, "fast"):
                raise SystemExit(f"--baseline-fast: the checkout in {args.baseline_src} has no FastPath switches "
                                 f"(it is from after ila.fuse); leave --baseline-fast out")
            try:
                self.baseline.fast = spec
            except Exception as e:  # the old checkout's own error type
                raise SystemExit(f"--baseline-fast {spec}: {e}") from None
        self.compiled = {}
        self.opts = {}
        m, k, n = MATMUL
        self.matmul = {dtype: (torch.randn(m, k, device=device).to(dtype), torch.randn(n, k, device=device).to(dtype))
                       for dtype in (torch.float32, torch.bfloat16)}
        self.flops = None

    def fuse(self, row: Row) -> torch.nn.Module:
        if row.precision == "int8":
            return int8_linears(copy.deepcopy(self.model).fuse(row.fused))
        return copy.deepcopy(self.model).fuse(row.fused, precision=row.precision)

    def count_flops(self) -> float:
        """FLOPs of one inference call (the unfused model; the fused rows do the same work, give or take)."""
        if self.flops is None:
            from torch.utils.flop_counter import FlopCounterMode
            counter = FlopCounterMode(display=False)
            with counter, torch.no_grad():
                self.model.eval()(self.video, text_features=self.text)
            self.flops = counter.get_total_flops()
        return self.flops

    def forward(self, row: Row):
        if row.matmul is not None:
            return torch.nn.functional.linear(*self.matmul[row.matmul])
        if row.release:
            with autocast(row.amp, self.device):
                return self.release(self.video, None)[0]
        model = (self.baseline_fused if row.fused is not None else self.baseline) if row.baseline else \
            self.model if row.fused is None else self.fused[(row.fused, row.precision)]
        if row.baseline_fast is not None:
            model.fast = row.baseline_fast  # the old checkout's switches: 'off' = its straightforward path
        if row.compile:
            if row.name not in self.compiled:
                self.compiled[row.name] = torch.compile(model)
            model = self.compiled[row.name]
        with autocast(row.amp, self.device):
            return model(self.video, text_features=self.text).logits

    def set_release_mode(self, training: bool) -> None:
        """The authors' alignment takes its nine disturbed points from its own `is_training` flag, not from
        `train()`/`eval()` (their evaluation sets it; the golden fixtures were made that way)."""
        self.release.train(training)
        for m in self.release.modules():
            if hasattr(m, "is_training"):
                m.is_training = training

    def inference(self, row: Row):
        def run():
            self.set_release_mode(False) if row.release else None if row.matmul is not None else \
                self.other_or_model(row).eval()
            with torch.inference_mode() if not row.compile else torch.no_grad():
                return self.forward(row).float()
        return run

    def other_or_model(self, row: Row) -> torch.nn.Module:
        return self.release if row.release else self.baseline if row.baseline else self.model

    def train_step(self, row: Row):
        model = self.other_or_model(row)
        key = "release" if row.release else "baseline" if row.baseline else "ila"
        if key not in self.opts:
            self.opts[key] = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
        if not hasattr(self, "target"):
            classes = self.text.shape[0] if self.text is not None else self.cfg.num_classes
            self.target = torch.randint(0, classes, (self.args.batch,), device=self.device)
        opt = self.opts[key]

        def step():
            self.set_release_mode(True) if row.release else model.train()
            if not row.release:
                model.visual.transformer.grad_checkpointing = row.checkpointing
                out = model(self.video, text_features=self.text)
                logits, align = out.logits, out.align_losses.sum()
            else:
                logits, losses = model(self.video, None)
                align = sum(losses)
            loss = torch.nn.functional.cross_entropy(logits.float(), self.target) + align
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
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
    argv += ["--timer", args.timer]
    argv += ["--amp", args.amp] if args.amp else []
    argv += ["--ablation"] * args.ablation + ["--compile"] * args.compile
    argv += ["--release-src", args.release_src] if args.release_src else []
    argv += ["--release-amp", args.release_amp] if args.release_amp else []
    argv += ["--precision", *args.precision] + ["--matmul"] * args.matmul
    argv += ["--baseline-src", args.baseline_src] if args.baseline_src else []
    argv += ["--baseline-fast", *args.baseline_fast] if args.baseline_fast else []
    argv += ["--grad-checkpointing"] * args.grad_checkpointing
    argv += ["--rows", *args.rows] if args.rows else []
    out = subprocess.run([sys.executable, __file__, *argv, "--device", args.device, "--_memory-of", row, phase],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def measure(runner: Runner, rows: list[Row], phase: str, args, device) -> dict[str, dict]:
    make = runner.inference if phase == "inference" else runner.train_step
    rows = [row for row in rows if (phase == "train" and row.trains and row.matmul is None)
            or (phase == "inference" and not row.checkpointing)]
    fns = {row.name: make(row) for row in rows}
    times = {row.name: [] for row in rows}
    iters = args.iters if phase == "inference" else max(1, args.iters // 2)
    for _ in range(args.repeats):
        for row in rows:
            times[row.name].append(timed(fns[row.name], args.warmup, iters, device,
                                         time.process_time if args.timer == "cpu" else time.perf_counter))
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
    """max |logits - unfused logits| / max |unfused logits|, eval mode."""
    ref = runner.inference(rows[0])()
    return {row.name: ((runner.inference(row)() - ref).abs().max() / ref.abs().max()).item() for row in rows
            if row.matmul is None}


def report(phase, rows, results, dev, batch, flops: float | None = None) -> list[dict]:
    """One table; `flops`: one inference call's FLOPs, for the GFLOP/s column (a bare matmul row: its own)."""
    base = results["unfused"]["sec"]
    print(f"\n{phase}:")
    print(f"| row | ms/clip | clips/s | vs unfused | peak MiB | logits deviation | GFLOP/s |")
    print("|---|---|---|---|---|---|---|")
    out = []
    for row in (row for row in rows if row.name in results):
        r = results[row.name]
        name = row.name.removesuffix(" + checkpointing")
        work = 2 * MATMUL[0] * MATMUL[1] * MATMUL[2] if row.matmul is not None else flops
        line = dict(phase=phase, row=row.name, ms_per_clip=r["sec"] / batch * 1000, clips_per_s=batch / r["sec"],
                    ratio=base / r["sec"], peak_mib=r["mem"], deviation=dev.get(name),
                    gflops=work / r["sec"] / 1e9 if work else None)
        dev_text = "-" if line["deviation"] is None else f"{line['deviation']:.1e}"
        gflops = "-" if line["gflops"] is None else f"{line['gflops']:.0f}"
        per_clip = ("-", "-") if row.matmul is not None else \
            (f"{line['ms_per_clip']:.1f}", f"{line['clips_per_s']:.2f}")
        print(f"| {row.name} | {per_clip[0]} | {per_clip[1]} | {line['ratio']:.2f}x | "
              f"{line['peak_mib']:.0f} | {dev_text} | {gflops} |")
        out.append(line)
    return out


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", nargs="+", default=["ila-b32-8f-k400"], help="one or more presets, one after another")
    p.add_argument("--batch", type=int, nargs="+", default=[2], help="clips per call (one value, or one per preset)")
    p.add_argument("--frames", type=int, default=None)
    p.add_argument("--temporal", default=None, choices=temporal_variants())
    p.add_argument("--classes", type=int, default=3, help="text classes for a text head (features cached)")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats of each row (best is reported)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--timer", choices=["wall", "cpu"], default="wall",
                   help="cpu: CPU time this process used (CPU device), which other jobs on the machine hardly move; "
                        "with --threads 1 it is the work done, without OpenMP spin-waiting")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--ablation", action="store_true", help="also the fused model without each rewrite / with it alone")
    p.add_argument("--release-src", default=None, metavar="DIR",
                   help="also the authors' model, from a checkout of github.com/Francis-Rings/ILA")
    p.add_argument("--baseline-src", default=None, metavar="DIR",
                   help="also ila's model from another checkout (e.g. `git worktree add DIR main`), same weights")
    p.add_argument("--baseline-fast", nargs="+", default=None, metavar="SPEC",
                   help="a --baseline-src checkout from before ila.fuse (its FastPath switches): one row per setting, "
                        "e.g. `off on` for its straightforward and fast paths")
    p.add_argument("--amp", choices=["bf16", "fp16"], default=None, help="also the unfused model under autocast")
    p.add_argument("--compile", action="store_true", help="also the unfused model through torch.compile")
    p.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16", "int8"],
                   help="also the fused model in these precisions (bf16: ila.fuse(precision='bf16'); int8: dynamic "
                        "int8 linears, measured here only)")
    p.add_argument("--release-amp", choices=["bf16", "fp16"], default=None,
                   help="with --release-src: also the authors' model under this autocast (fp16: their apex O1)")
    p.add_argument("--matmul", action="store_true", help="also a bare fp32 and bf16 matmul (the hardware's limit)")
    p.add_argument("--grad-checkpointing", action="store_true", help="also training steps with gradient checkpointing")
    p.add_argument("--rows", nargs="+", default=None, help="keep only these rows (and `unfused`, the reference)")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-inference", action="store_true", help="training steps only (no logits deviation column)")
    p.add_argument("--memory", action="store_true", help="CPU: peak RSS per row, each in a fresh process")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p.add_argument("--_memory-of", nargs=2, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.baseline_fast and not args.baseline_src:
        p.error("--baseline-fast sets the FastPath of a --baseline-src checkout; give --baseline-src DIR too")
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
    if args._memory_of:  # child process of --memory: run one row's phase, print the peak
        name, phase = args._memory_of
        row = next(r for r in rows if r.name == name)
        runner = Runner(args, device, [row])
        fn = runner.inference(row) if phase == "inference" else runner.train_step(row)
        reset_peak()
        for _ in range(args.warmup + 1):
            fn()
        print(peak_mib(device))
        return []
    runner = Runner(args, device, rows)
    print(f"\n## {args.model}: temporal={runner.cfg.temporal} frames={runner.cfg.num_frames} batch={args.batch} "
          f"device={device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}) "
          f"threads={torch.get_num_threads()} torch={torch.__version__} timer={args.timer}")
    inference_rows = [row for row in rows if not row.checkpointing]
    print(f"threads: torch {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} before the run")
    lines, dev = [], {}
    if not args.skip_inference:
        dev = deviations(runner, inference_rows)
        lines = report("inference", inference_rows, measure(runner, rows, "inference", args, device), dev,
                       args.batch, runner.count_flops())
    if not args.skip_train:
        lines += report("training step", [row for row in rows if row.trains], measure(runner, rows, "train", args,
                                                                                        device), dev, args.batch)
    return [dict(preset=args.model, **line) for line in lines]

if __name__ == "__main__":
    main()
