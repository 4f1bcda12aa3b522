"""Processes that cooperate: the torchrun environment, the process group, and who reads which videos.

`torchrun --nproc_per_node N -m ila train ...` (or a multi-node torchrun rendezvous) sets RANK,
WORLD_SIZE and LOCAL_RANK; `setup()` joins the group with NCCL on GPUs and gloo on CPUs. A plain
`ila train` is a world of one and never touches torch.distributed.

Samplers: training splits one seeded permutation per epoch across processes, so a step of N processes
with batch b reads exactly the videos a single process with batch N*b reads, and can restart in the
middle of an epoch; evaluation gives every video to exactly one process, with no padding.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from ila.errors import UserError


@dataclass
class Env:
    """This process's place in the run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def pick_device(choice: str = "auto", local_rank: int = 0) -> torch.device:
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError("device=cuda was asked for but no CUDA GPU is visible; use device=cpu or auto")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def inference_device(cfg, overrides) -> str:
    """Evaluation and prediction run on `auto` unless `--set device=...` says otherwise: the device a checkpoint
    was trained on says nothing about the machine it is used on."""
    return cfg.device if any(o.strip().startswith("device=") for o in overrides) else "auto"


def setup(device: str = "auto") -> Env:
    """Read the torchrun environment and join the process group (once); a world of one otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=timedelta(minutes=30),
                                **({"device_id": dev} if dev.type == "cuda" else {}))
    return Env(rank=rank, world=world, local_rank=local_rank, device=dev)


def stop_with_launcher() -> None:
    """Under torchrun, end this worker when the launcher dies (even by `kill -9`), instead of letting it run
    on and write into the run directory. Linux: the kernel sends SIGTERM on the parent's death
    (`prctl(PR_SET_PDEATHSIG)`); elsewhere a watcher thread notices the parent is gone within a second."""
    if "TORCHELASTIC_RUN_ID" not in os.environ and "LOCAL_RANK" not in os.environ:
        return
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                print(f"ila: the torchrun launcher (pid {parent}) is gone; stopping worker {os.getpid()}",
                      file=sys.stderr)
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(1.0)

    if os.getppid() != parent or parent == 1:   # the launcher died before the prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=watch, name="ila-launcher-watch", daemon=True).start()


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: Env) -> None:
    if env.distributed:
        dist.barrier()


def all_mean(value: torch.Tensor, env: Env) -> torch.Tensor:
    """Mean of a tensor over processes (a copy; the input is untouched)."""
    value = value.detach().clone()
    if env.distributed:
        dist.all_reduce(value)
        value /= env.world
    return value


def any_true(flag: bool, env: Env) -> bool:
    """True when the flag is true on any process (so all of them take the same branch)."""
    if not env.distributed:
        return flag
    t = torch.tensor([float(flag)], device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather(obj: Any, env: Env) -> list[Any]:
    """Every process's object, in rank order (small Python objects and CPU tensors)."""
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any, env: Env) -> Any:
    """Rank 0's object on every process."""
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class TrainSampler(Sampler[int]):
    """A seeded permutation per epoch, cut into global batches and dealt out across processes.

    Global batch g holds permutation positions [g*B*world, (g+1)*B*world); process r reads the positions
    congruent to r modulo world, so the union of one step over processes equals a single process
    reading with batch B*world. Batches that do not fill a whole optimizer step (`accumulation` of them)
    are dropped, as the release drops the incomplete last batch. `start(epoch, batches_done)` positions
    the sampler, e.g. after a resume in the middle of an epoch.
    """

    def __init__(self, size: int, batch_size: int, env: Env, seed: int = 0, shuffle: bool = True,
                 accumulation: int = 1):
        self.size, self.batch_size, self.env, self.seed, self.shuffle = size, batch_size, env, seed, shuffle
        self.batches = size // (batch_size * env.world) // accumulation * accumulation
        self.epoch, self.skip = 0, 0

    def start(self, epoch: int, batches_done: int = 0) -> None:
        self.epoch, self.skip = epoch, batches_done

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100003 + self.epoch))
        else:
            order = torch.arange(self.size)
        used = order[: self.batches * self.batch_size * self.env.world]
        mine = used[self.env.rank:: self.env.world]
        return iter(mine[self.skip * self.batch_size:].tolist())

    def __len__(self) -> int:
        return (self.batches - self.skip) * self.batch_size


class ShardSampler(Sampler[int]):
    """Evaluation: process r reads videos r, r+world, ...; every video exactly once, none padded."""

    def __init__(self, size: int, env: Env):
        self.indices = list(range(env.rank, size, env.world))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
