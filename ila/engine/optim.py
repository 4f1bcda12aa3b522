"""The optimizer and the learning-rate schedule of a run, each made by one factory from the config.

    optimizer = create_optimizer(model, cfg)                      # AdamW on the model's parameter groups
    scheduler = create_scheduler(optimizer, cfg, steps_per_epoch)  # timm scheduler, stepped per optimizer step
    scheduler.step_update(step)                                    # before step `step` (0-based)

Parameter groups (`train.optimizer_groups`): `release` gives each part of the model the release's lr and weight
decay (message_* 5e-4 / 1e-2, temporal_* 10 x base / 1e-3, head 4e-4 / base wd, prompts 10 x base / base wd,
CLIP base / base wd); `uniform` gives every parameter the base lr and weight decay. Biases, 1-D tensors and
position embeddings get no weight decay in either.

Schedules (`train.schedule`, timm's schedulers, counted in optimizer steps): a linear warm-up from 0
over `train.warmup_epochs`, and then, over the whole run (the warm-up overlaps its start, as in the release):
`cosine` (the release's) down to train.lr / 100, `linear` down to train.lr / 100, or `constant` at each group's
lr. The schedule is a function of the step alone: a resumed run sets the lr of its next step like the
uninterrupted one (the groups' `initial_lr` travel in the optimizer's state).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ila.config import SCHEDULES
from ila.models.ila import parameter_group_map

BETAS, EPS = (0.9, 0.98), 1e-8          # the release's AdamW


# ------------------------------------------------------------------------------------------ parameter groups

def release_rates(base_lr: float, weight_decay: float) -> dict[str, tuple[float, float]]:
    """(lr, weight decay) of each release group (`ila.models.ila.parameter_group_map` names the group of each
    parameter: a video block's own ones as its `trainable` declares)."""
    return {"message": (5e-4, 1e-2), "temporal": (10 * base_lr, 1e-3), "head": (4e-4, weight_decay),
            "prompts": (10 * base_lr, weight_decay), "clip": (base_lr, weight_decay)}


def param_groups(model: nn.Module, base_lr: float = 8e-6, weight_decay: float = 3e-3,
                 scheme: str = "release") -> list[dict]:
    """AdamW parameter groups of `model`'s trainable parameters, named `GROUP` / `GROUP_no_decay` in the order
    their first parameter appears; no weight decay on 1-D tensors, biases and positional embeddings. Each
    parameter's group is `ila.models.ila.parameter_group_map`'s (the one map `ILAModel.set_trainable` reads)."""
    if scheme not in ("release", "uniform"):
        raise ValueError(f"parameter-group scheme {scheme!r}: use release or uniform")
    rates = release_rates(base_lr, weight_decay)
    group_of = parameter_group_map(model)
    groups: dict[tuple[str, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        group = group_of[name]
        lr, wd = rates[group] if scheme == "release" else (base_lr, weight_decay)
        no_decay = p.ndim <= 1 or name.endswith(".bias") or "positional_embedding" in name
        key = (group, no_decay)
        if key not in groups:
            groups[key] = {"name": f"{group}{'_no_decay' if no_decay else ''}", "params": [], "lr": lr,
                           "weight_decay": 0.0 if no_decay else wd}
        groups[key]["params"].append(p)
    return list(groups.values())


def create_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    """AdamW (betas 0.9 / 0.98, eps 1e-8) on `model`'s groups for `cfg.train` (lr, weight_decay,
    optimizer_groups). torch's fused kernel where the parameters live on a CPU or a CUDA GPU: one pass over all
    tensors instead of a loop over ~200 of them (the demo model's step: 1.4 ms instead of 5.9 on 2 CPU cores)."""
    t = cfg.train
    groups = param_groups(model, t.lr, t.weight_decay, t.optimizer_groups)
    fused = {p.device.type for g in groups for p in g["params"]} <= {"cpu", "cuda"}
    return torch.optim.AdamW(groups, betas=BETAS, eps=EPS, fused=fused)


# ------------------------------------------------------------------------------------------ schedules

def _cosine(optimizer, total: int, warmup: int, floor: float):
    from timm.scheduler import CosineLRScheduler

    return CosineLRScheduler(optimizer, t_initial=total, lr_min=floor, warmup_t=warmup, warmup_lr_init=0.0,
                             cycle_limit=1, t_in_epochs=False)


def _linear(optimizer, total: int, warmup: int, floor: float):
    from timm.scheduler import PolyLRScheduler  # a polynomial of power 1

    return PolyLRScheduler(optimizer, t_initial=total, power=1.0, lr_min=floor, warmup_t=warmup, warmup_lr_init=0.0,
                           cycle_limit=1, t_in_epochs=False)


def _constant(optimizer, total: int, warmup: int, floor: float):
    from timm.scheduler import StepLRScheduler  # a step schedule that never decays

    return StepLRScheduler(optimizer, decay_t=total, decay_rate=1.0, warmup_t=warmup, warmup_lr_init=0.0,
                           t_in_epochs=False)


@dataclass(frozen=True)
class Schedule:
    """One `train.schedule` value: how its timm scheduler is built and how the run header describes it."""

    build: Callable                     # (optimizer, total steps, warm-up steps, floor lr) -> timm scheduler
    description: str                    # after the warm-up; {floor} is train.lr / 100


SCHEDULES.register("cosine", Schedule(_cosine, "per-step cosine to {floor}"))   # train.schedule's values
SCHEDULES.register("linear", Schedule(_linear, "per-step linear decay to {floor}"))
SCHEDULES.register("constant", Schedule(_constant, "constant at each group's lr"))


def warmup_steps(cfg, steps_per_epoch: int) -> int:
    """Optimizer steps of the linear warm-up: train.warmup_epochs, rounded to a whole step."""
    return round(cfg.train.warmup_epochs * steps_per_epoch)


def create_scheduler(optimizer: torch.optim.Optimizer, cfg, steps_per_epoch: int):
    """The `train.schedule` scheduler for `optimizer` (a timm scheduler counting optimizer steps): call
    `step_update(step)` before each step. Its `state_dict()` / `load_state_dict()` round-trip, though resuming
    needs neither: the lr is a function of the step."""
    t = cfg.train
    return SCHEDULES.get(t.schedule).obj.build(optimizer, t.epochs * steps_per_epoch, warmup_steps(cfg, steps_per_epoch),
                                       t.lr / 100)


def describe_schedule(cfg, steps_per_epoch: int) -> str:
    """The schedule in words, for the run header: 'N epochs x S steps, linear warm-up ..., then ...'."""
    t = cfg.train
    after = SCHEDULES.get(t.schedule).obj.description.format(floor=f"{t.lr / 100:.3g}")
    warmup = (f"linear warm-up over {t.warmup_epochs:g} epoch(s) from 0, then {after}"
              if warmup_steps(cfg, steps_per_epoch) else f"no warm-up, {after}")
    return f"{t.epochs} epochs x {steps_per_epoch} steps, {warmup} (base lr {t.lr:.3g})"
