"""The optimizer and schedule factories (ila.engine.optim): the lr at given steps of every `train.schedule` with
its warm-up, the scheduler's state round trip, the parameter groups, the config key and the run header."""
import math

import pytest
import torch

from ila.cli import main
from ila.config import load_config
from ila.engine.optim import (BETAS, EPS, SCHEDULES, create_optimizer, create_scheduler, describe_schedule,
                              param_groups)
from ila.engine.report import run_header
from ila.errors import UserError
from ila.models.ila import ILAModel

BASE = [1e-3, 5e-4]          # two groups: the schedule scales each from its own lr
FLOOR = 1e-3 / 100           # train.lr / 100, shared by every group (the release's floor)


def optimizer():
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    return torch.optim.AdamW([{"params": [p], "lr": lr} for p, lr in zip(params, BASE)])


def schedule(name, epochs=10, warmup=2, steps=3):
    """(optimizer, scheduler) for `train.schedule=name`: `epochs` x `steps` optimizer steps, `warmup` epochs."""
    cfg = load_config("tiny", ["train.lr=1e-3", f"train.epochs={epochs}", f"train.warmup_epochs={warmup}",
                               f"train.schedule={name}"])
    opt = optimizer()
    return opt, create_scheduler(opt, cfg, steps_per_epoch=steps)


def lrs(opt, sched, step):
    sched.step_update(step)
    return [g["lr"] for g in opt.param_groups]


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_every_schedule_warms_up_linearly_from_zero(name):
    opt, sched = schedule(name)                                      # 30 steps, 6 of warm-up
    assert lrs(opt, sched, 0) == [0.0, 0.0]
    assert lrs(opt, sched, 3) == pytest.approx([0.5e-3, 0.25e-3], rel=1e-12)   # half-way
    assert lrs(opt, sched, 5) == pytest.approx([b * 5 / 6 for b in BASE], rel=1e-12)
    opt, sched = schedule(name, warmup=0.5)                          # round(0.5 x 3) = 2 steps
    assert lrs(opt, sched, 1) == pytest.approx([b / 2 for b in BASE], rel=1e-12)


def test_cosine_runs_over_the_whole_run_down_to_a_hundredth():
    opt, sched = schedule("cosine")
    cos = lambda t, base: FLOOR + 0.5 * (base - FLOOR) * (1 + math.cos(math.pi * t / 30))  # noqa: E731
    for t in (6, 7, 15, 29):                                         # the warm-up overlaps the cosine's start
        assert lrs(opt, sched, t) == pytest.approx([cos(t, b) for b in BASE], rel=1e-12)
    assert lrs(opt, sched, 30) == [FLOOR, FLOOR]
    opt, sched = schedule("cosine", warmup=0)
    assert lrs(opt, sched, 0) == pytest.approx(BASE, rel=1e-12)      # no warm-up: the cosine's top


def test_linear_decays_in_equal_steps_to_a_hundredth():
    opt, sched = schedule("linear")
    line = lambda t, base: FLOOR + (base - FLOOR) * (1 - t / 30)    # noqa: E731
    for t in (6, 7, 15, 29):
        assert lrs(opt, sched, t) == pytest.approx([line(t, b) for b in BASE], rel=1e-12)
    drops = [lrs(opt, sched, t)[0] - lrs(opt, sched, t + 1)[0] for t in range(6, 29)]
    assert max(drops) - min(drops) < 1e-15 and drops[0] == pytest.approx((1e-3 - FLOOR) / 30, rel=1e-9)
    assert lrs(opt, sched, 30) == [FLOOR, FLOOR]
    opt, sched = schedule("linear", warmup=0)
    assert lrs(opt, sched, 0) == pytest.approx(BASE, rel=1e-12)


def test_constant_holds_each_groups_lr_after_the_warm_up():
    opt, sched = schedule("constant")
    for t in (6, 7, 15, 29, 30):
        assert lrs(opt, sched, t) == BASE                            # exactly the groups' own lrs
    opt, sched = schedule("constant", warmup=0)
    assert lrs(opt, sched, 0) == BASE


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_state_round_trips_and_a_resumed_optimizer_gets_the_same_lrs(name):
    opt, sched = schedule(name)
    lrs(opt, sched, 11)
    other, fresh = schedule(name)
    fresh.load_state_dict(sched.state_dict())
    assert fresh.state_dict().keys() == sched.state_dict().keys()
    assert all(lrs(opt, sched, t) == lrs(other, fresh, t) for t in range(32))
    # the engine's resume: a new optimizer takes the saved one's state, then a new scheduler on it
    cfg = load_config("tiny", ["train.lr=1e-3", "train.epochs=10", "train.warmup_epochs=2", f"train.schedule={name}"])
    lrs(opt, sched, 11)
    resumed = optimizer()
    resumed.load_state_dict(opt.state_dict())
    again = create_scheduler(resumed, cfg, steps_per_epoch=3)
    assert all(lrs(opt, sched, t) == lrs(resumed, again, t) for t in range(11, 32))


def test_create_optimizer_uses_the_fused_kernel_with_the_same_updates():
    """On a CPU the factory's AdamW is torch's fused kernel; a step from the same weights and gradients moves
    them as the per-tensor AdamW with the same groups does, to float rounding (one step: after it, Adam turns
    the rounding differences of near-zero gradients into steps of the learning rate's size)."""
    cfg = load_config("tiny", ["train.lr=1e-2", "train.weight_decay=0.05"])
    models = [ILAModel(cfg.model) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    start = {n: p.detach().clone() for n, p in models[0].named_parameters()}
    fused = create_optimizer(models[0], cfg)
    loop = torch.optim.AdamW(param_groups(models[1], 1e-2, 0.05, cfg.train.optimizer_groups), betas=BETAS, eps=EPS,
                             foreach=False)
    assert fused.defaults["fused"] and not loop.defaults["fused"]
    video = torch.randn(2, cfg.model.num_frames, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for model, opt in zip(models, (fused, loop)):
        opt.zero_grad()
        model(video).logits.square().mean().backward()
        opt.step()
    moved = [(a - b).abs().max().item() for a, b in zip(models[0].parameters(), models[1].parameters())]
    assert max(moved) < 1e-6                                # an update is ~1e-2 (the lr): 4 orders above
    assert any((p - start[n]).abs().max() > 1e-3 for n, p in models[0].named_parameters())


def test_create_optimizer_is_adamw_on_the_release_or_uniform_groups():
    model = ILAModel(load_config("tiny", ["model.temporal=ila"]).model)
    model.set_trainable(full_finetune=True)
    for scheme in ("release", "uniform"):
        cfg = load_config("tiny", ["train.lr=2e-4", "train.weight_decay=0.05", f"train.optimizer_groups={scheme}"])
        opt = create_optimizer(model, cfg)
        assert isinstance(opt, torch.optim.AdamW)
        assert all(g["betas"] == BETAS and g["eps"] == EPS for g in opt.param_groups)
        expected = param_groups(model, 2e-4, 0.05, scheme)
        assert [(g["name"], g["lr"], g["weight_decay"], len(g["params"])) for g in opt.param_groups] == \
            [(g["name"], g["lr"], g["weight_decay"], len(g["params"])) for g in expected]
        assert expected[0]["params"][0] is opt.param_groups[0]["params"][0]
    cfg = load_config("tiny", ["train.lr=2e-4", "train.weight_decay=0.05"])   # the release's groups (tiny: uniform)
    cfg.train.optimizer_groups = "release"
    release = {g["name"]: (g["lr"], g["weight_decay"]) for g in create_optimizer(model, cfg).param_groups}
    assert release["message"] == (5e-4, 1e-2) and release["temporal"] == (pytest.approx(2e-3), 1e-3)
    assert release["clip"] == (2e-4, 0.05) and release["clip_no_decay"] == (2e-4, 0.0)
    with pytest.raises(ValueError, match="use release or uniform"):
        param_groups(model, scheme="per-layer")


def test_a_wrong_schedule_is_one_line_naming_the_choices(capsys):
    with pytest.raises(UserError) as info:
        load_config("tiny", ["train.schedule=step"])
    assert str(info.value) == "train.schedule='step' is not allowed; use one of cosine, linear, constant"
    assert main(["config", "show", "tiny", "--set", "train.schedule=Cosine"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["config", "show", "tiny", "--set", "train.schedule=linear"]) == 0
    assert "  schedule: linear\n" in capsys.readouterr().out
    assert load_config("tiny").train.schedule == "cosine"               # the release's


@pytest.mark.parametrize("name, words", [
    ("cosine", "linear warm-up over 2 epoch(s) from 0, then per-step cosine to 1e-05 (base lr 0.001)"),
    ("linear", "linear warm-up over 2 epoch(s) from 0, then per-step linear decay to 1e-05 (base lr 0.001)"),
    ("constant", "linear warm-up over 2 epoch(s) from 0, then constant at each group's lr (base lr 0.001)"),
])
def test_the_run_header_names_the_schedule(name, words):
    cfg = load_config("tiny", ["train.lr=1e-3", "train.epochs=10", "train.warmup_epochs=2", f"train.schedule={name}"])
    model = ILAModel(cfg.model)
    lines = run_header(cfg, model, create_optimizer(model, cfg), 3, "fresh")
    assert f"schedule: 10 epochs x 3 steps, {words}" in lines
    cfg.train.warmup_epochs = 0.1                                        # rounds to no warm-up step
    assert describe_schedule(cfg, 3) == f"10 epochs x 3 steps, no warm-up, {words.split('then ')[1]}"
