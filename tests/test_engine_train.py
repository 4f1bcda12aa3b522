"""The training loop on the tiny model and generated videos: outputs, schedule, exact resume, the
disturbance-offset decay, divergence, accumulation / clipping / checkpointing, mixed precision."""
import json
import math

import pytest
import torch

from ila.config import load_config
from ila.weights import checkpoint as stored
from ila.engine.classes import class_text
from ila.engine.optim import create_scheduler
from ila.engine.train import config_difference, initial_model, train
from ila.errors import UserError



def tiny(data, out, *sets):
    """The tiny preset on the generated set; one line per concern so tests read as their differences."""
    return load_config("tiny", [f"data.root={data}", f"data.train_list={data}/train.txt",
                                f"data.val_list={data}/val.txt", f"data.class_names={data}/classes.txt",
                                "data.workers=0", "device=cpu", "train.init=none", "train.lr=1e-3",
                                "train.optimizer_groups=uniform", "train.warmup_epochs=1", "train.epochs=2",
                                "train.batch_size=2", "train.eval_every_epochs=0", "eval.batch_size=4",
                                # the release's regularisation, not the tiny preset's own recipe: mixup/cutmix on
                                "train.weight_decay=3e-3", "train.mixup=0.8", "train.cutmix=1.0",
                                f"output={out}", *sets])


def weights(run_dir):
    return stored.read_checkpoint(run_dir, resume=True)["model"]


def assert_same_weights(a, b, exact=True):
    """Equal weights, or equal within float tolerance. Tolerance excepts one thing: attention key biases get a
    zero gradient in exact arithmetic (softmax ignores a shift shared by all keys), so their gradient is rounding
    noise that AdamW normalises into steps of about lr; they are only checked to stay within the lr scale."""
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        elif k.endswith("in_proj_bias"):
            q, key, v = a[k].chunk(3)
            q2, key2, v2 = b[k].chunk(3)
            torch.testing.assert_close(torch.cat([q, v]), torch.cat([q2, v2]), rtol=1e-4, atol=1e-6, msg=k)
            assert (key - key2).abs().max() < 1e-3 * 2, k
        else:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


def test_lr_schedule_warms_up_from_zero_then_cosine_to_a_hundredth():
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.AdamW([{"params": [params[0]], "lr": 1e-3}, {"params": [params[1]], "lr": 5e-4}])
    cfg = load_config("tiny", ["train.lr=1e-3", "train.epochs=10", "train.warmup_epochs=2"])
    sched = create_scheduler(opt, cfg, steps_per_epoch=3)

    def lrs(step):
        sched.step_update(step)
        return [g["lr"] for g in opt.param_groups]

    assert lrs(0) == [0.0, 0.0]
    assert lrs(3) == pytest.approx([0.5e-3, 0.25e-3])                 # half-way through 6 warm-up steps
    floor = 1e-3 / 100
    cos = lambda t, base: floor + 0.5 * (base - floor) * (1 + math.cos(math.pi * t / 30))  # noqa: E731
    assert lrs(6) == pytest.approx([cos(6, 1e-3), cos(6, 5e-4)])     # cosine over the whole run
    assert lrs(30) == pytest.approx([floor, floor])
    assert all(a > b for a, b in zip(lrs(29), [floor, floor]))


def test_a_run_writes_checkpoints_metrics_tensorboard_and_curves(motion, tmp_path):
    cfg = tiny(motion, tmp_path / "run", "train.eval_every_epochs=1", "train.save_every_steps=3", "train.keep_last=2",
               "train.log_every_steps=1")
    run = train(cfg)
    names = sorted(p.name for p in run.iterdir())
    assert names == [".lock", "best.pt", "checkpoint-00000006.pt", "checkpoint-00000008.pt", "config.yaml", "curves.png",
                     "metrics.jsonl", "tb"]
    assert load_config(run / "config.yaml") == cfg                    # the resolved config, reloadable
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tb").iterdir())
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 9))
    assert all(math.isfinite(r["loss"]) and r["clips_per_s"] > 0 for r in steps)
    assert steps[0]["lr"] == 0.0 and steps[2]["lr"] == pytest.approx(1e-3 * 2 / 4)  # warm-up over one epoch
    val = [r for r in rows if "val_top1" in r]
    assert [r["epoch"] for r in val] == [1, 2] and all(0 <= r["val_top1"] <= 100 for r in val)
    state = torch.load(run / "checkpoint-00000008.pt", weights_only=True)
    ts = state["train_state"]
    assert (ts["step"], ts["epoch"], ts["batch_in_epoch"]) == (8, 2, 0)
    assert state["class_names"][0] == "moving left to right" and state["config"]["output"] == str(tmp_path / "run")
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["train_state"] is None and best["config"] == state["config"]


def test_resume_after_any_step_equals_an_uninterrupted_run(motion, tmp_path):
    # the release recipe's randomness is all on: mixup / cutmix, augmentation, alignment BatchNorm, nine points
    recipe = ("train.mixup=0.8", "train.cutmix=1.0", "train.label_smoothing=0.1")
    whole = train(tiny(motion, tmp_path / "whole", *recipe))
    stopped = train(tiny(motion, tmp_path / "split", *recipe, "train.stop_at_step=3", "data.workers=1"))
    assert stored.latest_checkpoint(stopped).name == "checkpoint-00000003.pt"   # in the middle of epoch 1
    state = stored.read_checkpoint(stopped, resume=True)["train_state"]
    assert (state["epoch"], state["batch_in_epoch"]) == (0, 3)
    with pytest.raises(UserError, match=r"holds a run with another config \(train.lr: 0.001 -> 0.002\)"):
        train(tiny(motion, tmp_path / "split", *recipe, "train.lr=2e-3"))
    train(tiny(motion, tmp_path / "split", *recipe, "data.workers=1"))   # same run directory: continues
    assert_same_weights(weights(whole), weights(stopped))
    a, b = (stored.read_checkpoint(r, resume=True)["train_state"]["optimizer"] for r in (whole, stopped))
    for k in a["state"]:
        assert torch.equal(a["state"][k]["exp_avg_sq"], b["state"][k]["exp_avg_sq"])
    steps = [json.loads(line)["step"] for line in (stopped / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 8                # no rows repeated after the resume


def test_resume_with_a_linear_schedule_is_exact_and_the_schedule_cannot_change(motion, tmp_path):
    sets = ("train.schedule=linear", "train.log_every_steps=1")      # 4 steps per epoch, 8 in all, 4 of warm-up
    whole = train(tiny(motion, tmp_path / "whole", *sets))
    stopped = train(tiny(motion, tmp_path / "split", *sets, "train.stop_at_step=5"))   # in epoch 2, past the warm-up
    with pytest.raises(UserError, match=r"holds a run with another config \(train.schedule: 'linear' -> 'cosine'\)"):
        train(tiny(motion, tmp_path / "split", "train.log_every_steps=1"))
    train(tiny(motion, tmp_path / "split", *sets))
    assert_same_weights(weights(whole), weights(stopped))
    rows = [[json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (whole, stopped)]
    lr = [[r["lr"] for r in run if "loss" in r] for run in rows]
    assert lr[0] == lr[1]                                            # the resumed steps took the same lrs
    floor = 1e-3 / 100                                               # row of step s: the lr of step s - 1
    expected = [1e-3 * t / 4 for t in range(4)] + [floor + (1e-3 - floor) * (1 - t / 8) for t in range(4, 8)]
    assert lr[0] == pytest.approx(expected, rel=1e-12)


def test_a_key_added_after_a_run_was_saved_counts_as_its_default():
    cfg = load_config("tiny")
    saved = cfg.to_dict()
    del saved["train"]["schedule"]                                   # a run saved before train.schedule existed
    assert config_difference(saved, cfg.to_dict()) is None
    cfg.train.schedule = "constant"
    assert config_difference(saved, cfg.to_dict()) == "train.schedule: 'cosine' -> 'constant'"


def test_disturbance_offset_halves_from_epoch_30_and_survives_resume(motion, tmp_path):
    one = tmp_path / "one.txt"
    one.write_text((motion / "train.txt").read_text().splitlines()[0] + "\n")
    # the schedule is the trainer's (decay at each epoch start, offset saved and restored), whatever the blocks
    sets = (f"data.train_list={one}", "train.batch_size=1", "train.epochs=32", "train.warmup_epochs=0",
            "train.keep_last=1", "model.temporal=mean")
    run = train(tiny(motion, tmp_path / "run", *sets, "train.stop_at_step=31"))
    assert stored.read_checkpoint(run, resume=True)["train_state"]["align_delta"] == pytest.approx(0.1)  # halved at epoch 30
    train(tiny(motion, tmp_path / "run", *sets), resume=str(run))
    assert stored.read_checkpoint(run, resume=True)["train_state"]["align_delta"] == pytest.approx(0.05)  # and at epoch 31


def test_non_finite_loss_stops_at_its_step_and_keeps_the_last_good_checkpoint(motion, tmp_path):
    cfg = tiny(motion, tmp_path / "run", "train.lr=1e30", "train.warmup_epochs=0", "train.save_every_steps=1",
               "train.keep_last=5")
    with pytest.raises(UserError, match=r"loss is (nan|inf|-inf) at step (\d+)") as info:
        train(cfg)
    step = int(info.value.args[0].split("at step ")[1].split()[0])
    assert step >= 2 and "\n" not in str(info.value)
    last = stored.latest_checkpoint(tmp_path / "run")
    assert last.name == f"checkpoint-{step - 1:08d}.pt" and str(last) in str(info.value)
    assert stored.read_checkpoint(last, resume=True)["train_state"]["step"] == step - 1


def test_accumulation_clipping_and_checkpointing_match_one_big_batch(motion, tmp_path):
    # temporal=mean has no batch statistics, so two half batches give the same gradient as one full batch
    # (within float tolerance: the summation order differs).
    common = ("model.temporal=mean", "train.mixup=0", "train.cutmix=0", "train.epochs=1", "train.warmup_epochs=0",
              "train.clip_grad=0.05")
    big = train(tiny(motion, tmp_path / "big", *common, "train.batch_size=4"))
    accumulated = train(tiny(motion, tmp_path / "acc", *common, "train.batch_size=2", "train.accumulation=2",
                             "model.grad_checkpointing=true"))
    assert stored.read_checkpoint(big, resume=True)["train_state"]["step"] == 2
    assert_same_weights(weights(big), weights(accumulated), exact=False)


def test_mixed_precision_choices(motion, tmp_path):
    run = train(tiny(motion, tmp_path / "bf16", "train.amp=bf16", "train.epochs=1"))   # autocast on CPU
    assert all(torch.isfinite(v).all() for v in weights(run).values() if v.is_floating_point())
    with pytest.raises(UserError, match="train.amp=fp16 needs a GPU"):
        train(tiny(motion, tmp_path / "fp16", "train.amp=fp16"))
    with pytest.raises(UserError, match="do not fill one optimizer step"):
        train(tiny(motion, tmp_path / "big", "train.batch_size=16"))


def test_text_head_caches_class_features_while_the_text_tower_is_frozen(motion, tmp_path):
    sets = ("model.head=text", "train.epochs=1", "train.batch_size=4", "train.optimizer_groups=release")
    frozen = tiny(motion, tmp_path / "frozen", *sets, "model.freeze_clip=true")
    torch.manual_seed(frozen.train.seed)
    start = initial_model(frozen)
    text = class_text(start, ["a", "b"], torch.device("cpu"))
    assert text.features.shape == (2, start.cfg.embed_dim) and not text.features.requires_grad
    assert class_text(initial_model(tiny(motion, "x", *sets)), ["a", "b"], torch.device("cpu")).features is None
    after = weights(train(frozen))
    before = start.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(("text.", "visual.conv1")))
    assert not all(torch.equal(before[k], after[k]) for k in before if ".alignment." in k)


def test_compiled_training_takes_the_same_steps(motion, tmp_path):
    """train.compile=true (torch.compile of the model, an option meant for GPUs) trains like eager: the same loss at
    every step, and weights within 5 % of one AdamW step (lr) of eager's. (Parameters whose gradient is zero or
    nearly so, such as conv biases before a BatchNorm or attention queries and keys over near-identical tokens,
    get AdamW steps of rounding noise normalised to about lr, so fusion's different rounding shows there.)"""
    # grey clips (R = G = B) leave some alignment-conv weights with near-zero gradients, whose AdamW steps are
    # rounding noise normalised to about lr (see above): this test's clips stay in colour
    common = ("train.mixup=0", "train.cutmix=0", "train.epochs=1", "train.warmup_epochs=0", "train.log_every_steps=1",
              "data.grayscale=0")
    runs = [train(tiny(motion, tmp_path / name, *common, f"train.compile={name == 'compiled'}"))
            for name in ("eager", "compiled")]
    losses = [[json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
               if '"loss"' in line] for run in runs]
    assert len(losses[0]) == 4 and losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert stored.read_checkpoint(runs[1])["config"]["train"]["compile"] is True
    eager, compiled = weights(runs[0]), weights(runs[1])
    for k in eager:
        if k.endswith("in_proj_bias"):  # key biases: zero gradient in exact arithmetic, steps of noise (see above)
            assert (eager[k].chunk(3)[1] - compiled[k].chunk(3)[1]).abs().max() <= 4 * 1e-3, k
            eager[k], compiled[k] = eager[k].chunk(3)[::2], compiled[k].chunk(3)[::2]
        torch.testing.assert_close(eager[k], compiled[k], rtol=0, atol=0.05 * 1e-3, msg=k)


def test_device_augmentation_trains_and_resumes_exactly(motion, tmp_path):
    # data.augment=device: workers return uint8 clips, the recipe runs in the training process from per-step
    # generators, so a resumed run equals an uninterrupted one here too
    recipe = ("data.augment=device", "train.mixup=0.8", "train.cutmix=1.0", "train.label_smoothing=0.1")
    whole = train(tiny(motion, tmp_path / "whole", *recipe, "train.epochs=1"))
    stopped = train(tiny(motion, tmp_path / "split", *recipe, "train.epochs=1", "train.stop_at_step=2",
                         "data.workers=1"))
    train(tiny(motion, tmp_path / "split", *recipe, "train.epochs=1", "data.workers=1"))
    assert_same_weights(weights(whole), weights(stopped))
    cpu = train(tiny(motion, tmp_path / "cpu", "train.mixup=0.8", "train.cutmix=1.0", "train.epochs=1"))
    assert not all(torch.equal(a, b) for a, b in zip(weights(whole).values(), weights(cpu).values()))
