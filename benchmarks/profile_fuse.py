"""Where inference time goes: torch.profiler op table (self CPU time) of the unfused and the fused model.

    python benchmarks/profile_fuse.py --preset ila-b32-8f-k400 --batch 2 --threads 2 --iters 2 --top 25

Same random weights as benchmarks/model_speed.py. Prints, per model, the top ops by self CPU time with their
share of the total, and the share of GEMM-like ops (matmul/linear/conv/SDPA kernels) which fusion cannot shrink.
Shares, not absolute times, are what to compare on a shared machine.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(__file__))
from model_speed import build  # noqa: E402

GEMM = ("addmm", "mm", "bmm", "matmul", "linear", "_linear_pointwise", "conv", "_convolution_pointwise",
        "scaled_dot_product", "_flash_attention", "baddbmm", "mkldnn_convolution")


def is_gemm(name: str) -> bool:
    return any(k in name for k in GEMM)


def table(model, video, text, iters, top, label):
    with torch.inference_mode():
        model(video, text_features=text)  # warm-up
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(iters):
                model(video, text_features=text)
    events = [e for e in prof.key_averages(group_by_input_shape=False)]
    total = sum(e.self_cpu_time_total for e in events)
    leaf = {}
    for e in events:
        leaf[e.key] = leaf.get(e.key, 0) + e.self_cpu_time_total
    print(f"\n### {label}: total self CPU {total / 1e3 / iters:.0f} ms/call, load {os.getloadavg()[0]:.1f}")
    print("| op | self ms/call | share | calls/call |")
    print("|---|---|---|---|")
    counts = {e.key: e.count for e in events}
    for name, t in sorted(leaf.items(), key=lambda kv: -kv[1])[:top]:
        print(f"| {name} | {t / 1e3 / iters:.1f} | {100 * t / total:.1f}% | {counts[name] // iters} |")
    gemm = sum(t for n, t in leaf.items() if is_gemm(n))
    print(f"GEMM-like share (matmul/linear/conv/attention kernels): {100 * gemm / total:.1f}%")
    print("\nby input shape (top 15):")
    shaped = sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total)[:15]
    for e in shaped:
        print(f"  {e.key:40s} {e.self_cpu_time_total / 1e3 / iters:8.1f} ms  {str(e.input_shapes)[:110]}")
    for op in ("aten::copy_", "aten::cat", "aten::add", "aten::mul", "aten::mkldnn_convolution", "aten::addmm"):
        rows = sorted((e for e in prof.key_averages(group_by_input_shape=True) if e.key == op),
                      key=lambda e: -e.self_cpu_time_total)[:4]
        for e in rows:
            print(f"  {op:28s} {e.self_cpu_time_total / 1e3 / iters:8.1f} ms x{e.count // iters} "
                  f"{str(e.input_shapes)[:100]}")
    return total / iters, gemm / iters


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="ila-b32-8f-k400")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--ablation", default="", help="fusions to leave out of the fused model")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ns = argparse.Namespace(model=args.preset, frames=None, temporal=None, batch=args.batch, classes=3)
    cfg, model, video, text = build(ns, torch.device("cpu"))
    model.eval()
    fused = copy.deepcopy(model).fuse(args.ablation)
    print(f"## {args.preset} batch {args.batch} threads {torch.get_num_threads()} torch {torch.__version__}; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    u, ug = table(model, video, text, args.iters, args.top, "unfused")
    f, fg = table(fused, video, text, args.iters, args.top, f"fused (ablation: {args.ablation or 'none'})")
    print(f"\nself-time ratio unfused/fused {u / f:.2f}x; GEMM-like ms: unfused {ug / 1e3:.0f}, fused {fg / 1e3:.0f}; "
          f"non-GEMM ms: unfused {(u - ug) / 1e3:.0f}, fused {(f - fg) / 1e3:.0f}; "
          f"bound if fused non-GEMM were 0: {u / fg:.2f}x")


if __name__ == "__main__":
    main()
