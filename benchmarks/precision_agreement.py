"""Agreement of the inference precisions with fp32 (issue 24): logits on the parity fixtures, predictions on trained
models' validation sets.

    python benchmarks/precision_agreement.py                                   # the parity fixtures
    python benchmarks/precision_agreement.py --run runs/demo --val data/flat data/textured --int8

1. Parity fixtures (`--fixtures`, default ../shared/fixtures/official; every weight random, both release
   variants): max |logits - golden fp32 logits| / max |golden|, per precision, against `--tolerance` (2e-2 for
   bf16, the bound tests/test_precision.py asserts), and whether each clip's top-1 class is unchanged.
2. A trained run (`--run`: a run directory or checkpoint) on each `--val` set (a folder made by `ila make-dataset`:
   its val.txt and classes.txt): every validation video scored by `InferenceSession` (eval's views) in fp32 and in
   each precision; top-1 accuracy, its change in points, the share of videos whose predicted class is unchanged,
   and the largest probability difference.

`--int8` adds the int8 row measured by benchmarks/model_speed.py (every linear of the fused fp32 model as a
dynamic int8 linear; not an ila option), to compare its agreement with bf16's. `--autocast` adds the fp32 model
run under `torch.autocast("cpu", torch.bfloat16)` (the residual stream and the elementwise work stay fp32; not an
ila option either). For each trained row, the fp32 probability margin between the top two classes of every video
whose prediction changed (near ties change first), beside the median margin of all videos.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import sys
import time

import torch

import ila
from ila.engine.loaders import read_split
from ila.engine.session import InferenceSession
from ila.errors import UserError

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model_speed import int8_linears  # noqa: E402  (the int8 row is the speed benchmark's)

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "..", "shared", "fixtures", "official")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def fused(model, precision: str):
    """`model` fused in `precision` (int8: the fp32 fusion, then the int8 linears of model_speed.py)."""
    if precision == "int8":
        return int8_linears(model.fuse())
    return model.fuse(precision=precision)


def fixtures(folder: str, precisions: list[str], tolerance: float) -> list[dict]:
    rows = []
    for path in sorted(glob.glob(os.path.join(folder, "*_tiny.pt"))):
        fx = torch.load(path, weights_only=True)
        golden = fx["eval"]["logits"]
        for precision in precisions:
            model = fused(ila.load_release(fx["state_dict"]), precision)
            with torch.no_grad():
                logits = model(fx["video"], fx["text"] if model.text is not None else None).logits.float()
            err = rel_err(logits, golden)
            rows.append(dict(fixture=os.path.basename(path), precision=precision, rel_err=err,
                             within=err <= (1e-5 if precision == "fp32" else tolerance),
                             top1_same=float((logits.argmax(-1) == golden.argmax(-1)).float().mean())))
    print(f"\nparity fixtures ({os.path.normpath(folder)}); tolerance: fp32 1e-5, others {tolerance:g} "
          f"(max |diff| / max |golden|)")
    print("| fixture | precision | logits rel. error | within tolerance | top-1 unchanged |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['fixture']} | {r['precision']} | {r['rel_err']:.1e} | {'yes' if r['within'] else 'NO'} | "
              f"{r['top1_same']:.0%} |")
    return rows


def trained(run: str, sets: list[str], precisions: list[str]) -> list[dict]:
    rows = []
    for folder in sets:
        overrides = [f"data.root={folder}", f"data.val_list={folder}/val.txt",
                     f"data.class_names={folder}/classes.txt", "data.workers=0"]
        scores, labels = {}, None
        for precision in ["fp32"] + [p for p in precisions if p != "fp32"]:
            session = InferenceSession(run, overrides=overrides, quiet=True,
                                       precision="fp32" if precision in ("int8", "autocast") else precision)
            if precision == "int8":
                int8_linears(session.model)
            samples = read_split(session.cfg, "val", session.class_names)[0]
            start = time.perf_counter()
            with (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "autocast"
                  else contextlib.nullcontext()):
                result = session.scores(samples, progress=False)
            seconds = time.perf_counter() - start
            scores[precision], labels = result.outputs, result.labels
            ref = scores["fp32"]
            top2 = ref.float().topk(2, dim=-1).values
            margins = top2[:, 0] - top2[:, 1]                         # fp32 probability margin of the top two
            changed = result.outputs.argmax(-1) != ref.argmax(-1)
            top1 = float((result.outputs.argmax(-1) == labels).float().mean()) * 100
            rows.append(dict(set=folder, precision=precision, videos=len(labels), top1=top1,
                             top1_change=top1 - float((ref.argmax(-1) == labels).float().mean()) * 100,
                             unchanged=100 - float(changed.float().mean()) * 100,
                             max_prob_diff=(result.outputs - ref).abs().max().item(), seconds=seconds,
                             changed_margins=[round(m, 4) for m in margins[changed].tolist()],
                             median_margin=margins.median().item()))
    print(f"\ntrained run {run}: validation sets, eval's views, every video once")
    print("| set | precision | videos | top-1 % | change (points) | unchanged predictions % | max prob. diff | s | "
          "fp32 margins of the changed | median margin |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {os.path.basename(r['set'].rstrip('/'))} | {r['precision']} | {r['videos']} | {r['top1']:.2f} | "
              f"{r['top1_change']:+.2f} | {r['unchanged']:.2f} | {r['max_prob_diff']:.1e} | {r['seconds']:.1f} | "
              f"{', '.join(f'{m:.4f}' for m in r['changed_margins']) or '-'} | {r['median_margin']:.3f} |")
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fixtures", default=FIXTURES, help="the parity fixtures' folder ('' to skip)")
    p.add_argument("--tolerance", type=float, default=2e-2, help="bf16/int8 bound on the fixtures' logits")
    p.add_argument("--run", default=None, help="a trained run directory or checkpoint")
    p.add_argument("--val", nargs="*", default=[], help="`ila make-dataset` folders whose val.txt to score")
    p.add_argument("--int8", action="store_true", help="also the int8 row (benchmarks/model_speed.py's)")
    p.add_argument("--autocast", action="store_true", help="also the fp32 model under bf16 autocast (trained runs)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    precisions = ["fp32", "bf16"] + ["int8"] * args.int8
    out = {}
    if args.fixtures:
        out["fixtures"] = fixtures(args.fixtures, precisions, args.tolerance)
    if args.run:
        out["trained"] = trained(args.run, args.val, precisions + ["autocast"] * args.autocast)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    try:
        main()
    except UserError as e:                      # a bad run, preset or set: one line, as ila's commands print it
        raise SystemExit(f"{os.path.basename(__file__)}: {e}") from None
    except OSError as e:                        # an output folder that cannot be written
        raise SystemExit(f"{os.path.basename(__file__)}: {e.strerror or e} ({e.filename})") from None
