"""End to end: training steps fed by the loader (prepared videos, all cores, `data.augment=device`) against the
same steps on one batch already in device memory; GPU busy time from CUDA events around each step's model work.

    python benchmarks/data_e2e.py                                    # GPU: ILA-B/16 8f, bf16, compiled, batch 32
    python benchmarks/data_e2e.py --preset tiny --device cpu --steps 2 --batch 2 --videos 8 --no-compile   # smoke

Steps: writes `--videos` generated 340x256 H.264 videos, `ila prepare`s them (short side 256, gop 16), lists them
under several names so one epoch covers every timed step (`long_epoch`), builds the
trainer of `ila train` (random weights: `train.init=none`, nothing downloaded) and times `--steps` optimizer steps
(a) reading through the loader and (b) repeating one batch that already sits on the device (its augmentation
included, so both do the same device work). Loader-fed steps should be at most 10 % slower. Numbers only.
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.data_speed import write_video  # noqa: E402
from ila.config import load_config  # noqa: E402
from ila.data.prepare import prepare  # noqa: E402
from ila.engine import distributed as dist  # noqa: E402
from ila.engine.train import Trainer  # noqa: E402


def timed_steps(trainer: Trainer, batches, steps: int, cuda: bool) -> tuple[float, float]:
    """(seconds per step, fraction of the wall time the device spent in the steps' work)."""
    busy = 0.0
    start = time.perf_counter()
    for _ in range(steps):
        if cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
        trainer._optimizer_step(batches)
        if cuda:
            end.record()
            end.synchronize()
            busy += begin.elapsed_time(end) / 1000
    wall = time.perf_counter() - start
    return wall / steps, (busy / wall if cuda else float("nan"))


def long_epoch(annotation: str, root: str, clips: int) -> str:
    """A list of at least `clips` entries, the prepared videos under several names (symbolic links), so one epoch
    spans every timed step. Each loader worker makes whole batches, and an epoch of only a few batches would keep
    most workers idle and stall at every epoch boundary: not what a training run on a real dataset sees."""
    lines = [line.split() for line in open(annotation).read().splitlines() if line.strip()]
    copies = max(1, -(-clips // len(lines)))
    out = []
    for r in range(copies):
        for rel, label in lines:
            name = rel if r == 0 else f"{os.path.splitext(rel)[0]}_copy{r}.mp4"
            if r:
                os.symlink(os.path.join(root, rel), os.path.join(root, name))
            out.append(f"{name} {label}\n")
    path = os.path.join(root, "long_epoch.txt")
    with open(path, "w") as f:
        f.writelines(out)
    return path


def endless(trainer: Trainer):
    """Batches through the loader, epoch after epoch (every batch read and decoded, none replayed)."""
    for epoch in itertools.count():
        trainer.dataset.set_epoch(epoch)
        trainer.sampler.start(epoch, 0)
        yield from trainer.loader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="ila-b16-8f-k400")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--videos", type=int, default=96)
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="loader workers (torchcodec-cuda: 0)")
    parser.add_argument("--decoder", default="pyav", choices=["pyav", "torchcodec", "torchcodec-cuda"],
                        help="data.decoder; torchcodec-cuda decodes on the GPU in the training process (workers 0)")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--amp", default="bf16")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    if args.decoder == "torchcodec-cuda":
        args.workers = 0
    cores = os.cpu_count() or 1                     # writing and preparing the videos uses every core
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        from multiprocessing import Pool

        with Pool(cores) as pool:
            pool.starmap(write_video, [(os.path.join(tmp, f"v{v}.mp4"), 4.0, 30, 340, 256, None, v)
                                       for v in range(args.videos)])
        with open(os.path.join(tmp, "list.txt"), "w") as f:
            f.writelines(f"v{v}.mp4 {v % 4}\n" for v in range(args.videos))
        prep = prepare(os.path.join(tmp, "list.txt"), os.path.join(tmp, "prep"), short_side=256, gop=16,
                       workers=cores, root=tmp, progress=False)
        print(f"{args.videos} videos written and prepared in {time.perf_counter() - start:.0f} s "
              f"({len(prep.bad)} bad)")
        epoch_list = long_epoch(prep.annotation, os.path.join(tmp, "prep"),
                                clips=int((args.warmup + args.steps + 4) * args.batch * 1.25))
        sets = [f"data.root={tmp}/prep", f"data.train_list={epoch_list}", f"data.workers={args.workers}",
                "data.augment=device", f"data.decoder={args.decoder}", f"device={args.device}", "train.init=none", f"train.amp={args.amp}",
                f"train.compile={not args.no_compile}", f"train.batch_size={args.batch}", "train.eval_every_epochs=0",
                "train.epochs=100", f"output={tmp}/run"]
        if args.preset != "tiny":
            sets.insert(0, f"model.preset={args.preset}")
        cfg = load_config(args.preset if args.preset == "tiny" else "tiny", sets) if args.preset == "tiny" else \
            load_config(args.preset, sets[1:])
        trainer = Trainer(cfg, dist.setup(cfg.device))
        trainer.ddp.train()
        loader = endless(trainer)
        timed_steps(trainer, loader, args.warmup, cuda)                     # compile, worker start, cudnn
        fed, fed_busy = timed_steps(trainer, loader, args.steps, cuda)
        batch = next(loader)
        batch = {k: v.to(trainer.env.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        timed_steps(trainer, itertools.repeat(batch), 2, cuda)
        resident, resident_busy = timed_steps(trainer, itertools.repeat(batch), args.steps, cuda)
        clips = args.batch
        print(f"{args.preset}, batch {clips}, {args.workers} loader workers, decoder {args.decoder}, amp {args.amp}, "
              f"compile {not args.no_compile}")
        print(f"loader-fed:   {fed * 1000:.1f} ms/step, {clips / fed:.1f} clips/s, device busy {fed_busy:.0%}")
        print(f"in memory:    {resident * 1000:.1f} ms/step, {clips / resident:.1f} clips/s, device busy {resident_busy:.0%}")
        print(f"loader-fed steps are {fed / resident - 1:+.1%} slower than steps on a batch in device memory")


if __name__ == "__main__":
    main()
