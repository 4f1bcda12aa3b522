"""The training loop: the release recipe, mixed precision, accumulation, checkpoints, resume and DDP.

One optimizer step, as the release takes it:

    video, soft targets = mixup / cutmix / label smoothing (video, labels)
    out  = model(video, text_features=cached class-name features)
    loss = soft-target cross-entropy(out.logits, targets) + w * sum(out.align_losses)
    AdamW (betas .9/.98, eps 1e-8) on the model's parameter groups; lr per step: linear warm-up from 0
    over `warmup_epochs`, then `train.schedule` (the release's: cosine down to lr / 100); see `ila.engine.optim`.

At the start of every epoch the model halves its alignment disturbance offset from epoch 30 on
(`decay_align_delta`); the offset is part of the saved training state. A checkpoint after any step
holds weights, optimizer, loss scaler, every process's RNG state and the position in the epoch, so a
resumed run takes exactly the steps the uninterrupted one would have taken. A loss that is not finite
stops the run at once, before the step is applied and before anything is saved.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ila.atomic import write_text
from ila.config import Config, config_from_dict, load_config, require_complete
from ila.data.transforms import MixupCutmix
from ila.engine import checkpoint as ckpt
from ila.engine import distributed as dist
from ila.engine.classes import class_text
from ila.engine.evaluate import evaluate_split
from ila.engine.loaders import device_augment, loader, read_split, video_dataset
from ila.engine.optim import create_optimizer, create_scheduler
from ila.engine.precision import amp_dtype, autocast, grad_scaler
from ila.engine.report import Progress, Reporter, run_header
from ila.engine.runlock import RunLock
from ila.errors import UserError, one_line, printable
from ila.models.ila import build_model
from ila.presets import PRESETS
from ila.weights import checkpoint as stored
from ila.weights.factory import check_model_fits, load_model
from ila.weights.pretrained import is_hub_id

# keys that may change when a run continues: they steer the run, not what it computes
RESUMABLE_CHANGES = {"name", "output", "device", "data.workers", "data.root", "train.stop_at_step",
                     "train.log_every_steps", "train.save_every_steps", "train.keep_last",
                     "train.eval_every_epochs", "train.wandb", "data.cache", "eval.clips", "eval.crops",
                     "eval.batch_size", "eval.release_bn_quirk", "data.decoder_threads"}   # same frames at any count


class TrainingDiverged(UserError):
    """The loss stopped being a finite number."""


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against soft (mixed, smoothed) targets, averaged over the batch."""
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


def step_generator(*key: int) -> torch.Generator:
    """A generator seeded by (seed, step, micro-batch, process): a step's random draws do not depend on what
    ran before it, so a resumed run draws the same mixup / cutmix as an uninterrupted one."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(key)).generate_state(1, np.uint64)[0]))


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def config_difference(saved: dict, new: dict) -> str | None:
    """The first key (other than RESUMABLE_CHANGES) whose value differs, as 'key: old -> new'. A key the saved
    config lacks (added to ila after the run was saved, e.g. train.schedule) counts as its default, which is
    what that run used."""
    a, b = _flatten(saved), _flatten(new)
    defaults = _flatten(Config().to_dict())
    for key in sorted(set(a) | set(b)):
        old = a[key] if key in a else defaults.get(key)
        if key not in RESUMABLE_CHANGES and old != b.get(key):
            return f"{key}: {old!r} -> {b.get(key)!r}"
    return None


def run_dir_of(cfg: Config) -> Path:
    """The run directory a config writes to."""
    return Path(cfg.output or Path("runs") / cfg.name)


def _resume_state(cfg: Config, run_dir: Path, resume: str | Path | None) -> dict | None:
    """The checkpoint to continue from: `resume` (a checkpoint or run directory; "" for `run_dir`), else the
    newest readable one in an existing run directory, whose config must then match `cfg`. Newer checkpoints
    that cannot be read (cut short, corrupted) are named and skipped."""
    if resume is not None:
        state = stored.read_checkpoint(resume or run_dir, resume=True)
    else:
        found = stored.newest_readable(run_dir, resume=True)
        if found is None:
            return None
        state = found[1]
        diff = config_difference(state["config"], cfg.to_dict())
        if diff:
            raise UserError(f"{run_dir} holds a run with another config ({diff}); choose a new --output, "
                            f"or continue it with --resume {run_dir}")
    if state.get("train_state") is None:
        raise UserError(f"{resume or run_dir} holds weights only (no training state) and cannot be resumed")
    return state


class Trainer:
    """Builds everything a run needs from its config, then `run()` trains it."""

    def __init__(self, cfg: Config, env: dist.Env, resume: str | Path | None = None):
        self.cfg, self.env = cfg, env
        t = cfg.train
        self.run_dir = run_dir_of(cfg)
        samples, self.class_names = read_split(cfg, "train")
        if cfg.model.head == "classifier":            # a new classifier has one output per class of the data
            cfg.model.num_classes = len(self.class_names)
        self.state = _resume_state(cfg, self.run_dir, resume)
        self.val_samples = None
        if (cfg.data.val_list or cfg.data.val_split) and t.eval_every_epochs:
            self.val_samples = read_split(cfg, "val", self.class_names)[0]
        check_files_exist(cfg, {"train": samples, "val": self.val_samples or []})

        torch.manual_seed(t.seed)
        if self.state is not None:                     # the checkpoint's weights, not train.init's
            model = load_model(stored.record_of(self.state, self.run_dir, "resume checkpoint"), cfg)[0]
        else:
            model = initial_model(cfg)
        model.to(env.device)
        torch.manual_seed(t.seed * 1000 + 1 + env.rank)  # dropout / drop-path differ between processes
        if t.sync_bn:
            if env.device.type != "cuda":
                raise UserError("train.sync_bn=true needs GPUs (torch's SyncBatchNorm has no CPU path)")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model
        self.optimizer = create_optimizer(model, cfg)
        self.ddp = (nn.parallel.DistributedDataParallel(model, device_ids=[env.device] if env.device.type == "cuda"
                                                        else None) if env.distributed else model)
        if t.compile:
            self.ddp = torch.compile(self.ddp)
        self.amp = amp_dtype(t.amp, env.device)
        self.scaler = grad_scaler(self.amp, env.device)

        self.dataset = video_dataset(cfg, samples, train=True)
        self.sampler = dist.TrainSampler(len(self.dataset), t.batch_size, env, seed=t.seed, accumulation=t.accumulation)
        self.loader = loader(self.dataset, t.batch_size, self.sampler, cfg.data.workers, t.seed)
        self.augment = device_augment(cfg)
        self.steps_per_epoch = self.sampler.batches // t.accumulation
        if self.steps_per_epoch == 0:
            raise UserError(f"{len(self.dataset)} training videos do not fill one optimizer step of "
                            f"{t.batch_size * env.world * t.accumulation} clips (train.batch_size x processes x "
                            f"train.accumulation); lower train.batch_size or train.accumulation")
        self.total_steps = t.epochs * self.steps_per_epoch
        self.scheduler = create_scheduler(self.optimizer, cfg, self.steps_per_epoch)

        self.mixup = MixupCutmix(len(self.class_names), t.mixup, t.cutmix, t.mixup_switch_prob, t.label_smoothing)
        self.text = class_text(model, self.class_names, env.device)

        self.step, self.epoch, self.batch_in_epoch, self.best_top1, self.best_epoch = 0, 0, 0, None, None
        self.validation_pending = False    # an epoch ended and was saved, its validation has not finished
        if self.state is not None:
            self._restore(self.state["train_state"])

    # ------------------------------------------------------------------ state
    def _restore(self, ts: dict) -> None:
        if ts["steps_per_epoch"] != self.steps_per_epoch:
            raise UserError(f"the checkpoint's epochs had {ts['steps_per_epoch']} steps, this config gives "
                            f"{self.steps_per_epoch}: the training list, batch size, accumulation or process count "
                            f"changed, so the run cannot continue exactly")
        try:
            self.optimizer.load_state_dict(ts["optimizer"])
            self.scaler.load_state_dict(ts["scaler"])
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            raise UserError(f"the checkpoint's optimizer state does not fit this run's optimizer ({one_line(e)}): "
                            f"the parameter groups or trainable parameters changed, so it cannot be resumed "
                            f"exactly; start a new run with train.init=CHECKPOINT instead") from None
        self.step, self.epoch, self.batch_in_epoch = ts["step"], ts["epoch"], ts["batch_in_epoch"]
        self.best_top1, self.best_epoch = ts.get("best_top1"), ts.get("best_epoch")
        if not _valid_top1(self.best_top1):                # NaN: no valid validation result; any real one beats it
            self.best_top1, self.best_epoch = None, None
        recorded = stored.best_metrics(self.run_dir)       # best.pt may be newer than this checkpoint
        if recorded is not None and _valid_top1(recorded["top1"]) and \
                (self.best_top1 is None or recorded["top1"] > self.best_top1):
            self.best_top1, self.best_epoch = float(recorded["top1"]), recorded.get("epoch")
        self.validation_pending = bool(ts.get("validation_pending", False)) and self.val_samples is not None
        self.model.align_delta = ts["align_delta"]
        rngs = ts["rng"]
        ckpt.set_rng_state(rngs[self.env.rank] if len(rngs) == self.env.world else rngs[0])

    def _train_state(self) -> dict:
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "step": self.step,
                "align_delta": self.model.align_delta, "best_top1": self.best_top1, "best_epoch": self.best_epoch,
                "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps,
                "validation_pending": self.validation_pending,
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "rng": dist.gather(ckpt.rng_state(), self.env), "world": self.env.world}

    def save(self) -> Path | None:
        """checkpoint-STEP.pt (every process takes part: RNG states are gathered; the main one writes)."""
        state = self._train_state()
        path = None
        if self.env.main:
            path = ckpt.save_step_checkpoint(self.run_dir, self.step, self.cfg.train.keep_last, self.model,
                                             self.cfg, self.class_names, state)
        dist.barrier(self.env)
        self.saved_step = self.step
        return path

    # ------------------------------------------------------------------ loop
    def run(self) -> Path:
        cfg, env, t = self.cfg, self.env, self.cfg.train
        if env.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_text(self.run_dir / "config.yaml", cfg.to_yaml())
            print(f"run {self.run_dir}: {len(self.dataset)} videos, {len(self.class_names)} classes, "
                  f"{self.steps_per_epoch} steps/epoch x {t.epochs} epochs, global batch "
                  f"{t.batch_size * env.world * t.accumulation} ({env.world} process(es), {env.device}, "
                  f"amp {self.amp or 'off'})" + (f"; resuming at step {self.step}" if self.state else ""))

            weights = (f"resumed from step {self.step} ({self.run_dir})" if self.state else describe_init(cfg))
            for line in run_header(cfg, self.model, self.optimizer, self.steps_per_epoch, weights):
                print(line)
        dist.barrier(env)
        self.reporter = Reporter(self.run_dir, env.main, resume_step=self.step if self.state else None,
                                 redo_validation=self.validation_pending, wandb_project=t.wandb, config=cfg.to_dict())
        self.progress = Progress(self.total_steps, "train", env.main, initial=self.step)
        self.saved_step = self.step if self.state else -1
        try:
            if self.validation_pending:               # the run stopped while validating its last epoch
                self._validate(self.epoch - 1)
            while self.epoch < t.epochs and not self._stop_reached():
                self._epoch()
            self.progress.close()
            if env.main:
                self.reporter.write_curves(chance=100.0 / len(self.class_names))
        finally:
            self.progress.close()
            self.reporter.close()
        if env.main:
            print(f"stopped at step {self.step} (train.stop_at_step)" if self.step < self.total_steps
                  else f"done: {self.step} steps; checkpoints and curves in {self.run_dir.resolve()}")
            best = self.run_dir / "best.pt"
            if _valid_top1(self.best_top1):
                epoch = f" at epoch {self.best_epoch}" if self.best_epoch is not None else ""
                print(f"best: top-1 {self.best_top1:.2f}%{epoch}, " + (f"weights {best.resolve()}" if best.is_file()
                      else f"no {best.name} in {self.run_dir} (it was removed)"))
            elif self.val_samples is not None:
                print(f"best: no valid validation result yet; the last weights are in "
                      f"{stored.latest_checkpoint(self.run_dir) or self.run_dir}")
            else:
                print("no validation (data.val_list empty, or train.eval_every_epochs=0): no best.pt; the last "
                      f"weights are in {stored.latest_checkpoint(self.run_dir) or self.run_dir}")
        return self.run_dir

    def _stop_reached(self) -> bool:
        return 0 < self.cfg.train.stop_at_step <= self.step

    def _epoch(self) -> None:
        env, t = self.env, self.cfg.train
        if self.batch_in_epoch == 0:
            self.model.decay_align_delta(self.epoch)
        self.dataset.set_epoch(self.epoch)
        self.sampler.start(self.epoch, self.batch_in_epoch)
        self.progress.describe(f"epoch {self.epoch + 1}/{t.epochs}")
        self.ddp.train()
        sums = torch.zeros(3, device=env.device)  # loss, classification loss, alignment loss since the last log
        logged = 0
        batches = iter(self.loader)
        while not self._epoch_done() and not self._stop_reached():
            start = time.perf_counter()
            step_sums = self._optimizer_step(batches)
            sums += step_sums
            logged += 1
            rate = self.progress.update(t.batch_size * env.world * t.accumulation, loss=float(step_sums[0]),
                                        lr=self._lr())
            if self.step % t.log_every_steps == 0 or self._epoch_done():
                mean = dist.all_mean(sums / logged, env)
                self.reporter.log(self.step, epoch=round(self.epoch + self.batch_in_epoch / self.batches_per_epoch, 4),
                                  loss=float(mean[0]), cls_loss=float(mean[1]), align_loss=float(mean[2]),
                                  lr=self._lr(), **self._group_lrs(), clips_per_s=round(rate, 2),
                                  step_time=round(time.perf_counter() - start, 4))
                sums.zero_()
                logged = 0
            if t.save_every_steps and self.step % t.save_every_steps == 0 and not self._epoch_done():
                self.save()
            if self._stop_reached() and self.saved_step != self.step and not self._epoch_done():
                self.save()
        self._report_bad_files()
        if self._epoch_done():
            self._end_epoch()

    @property
    def batches_per_epoch(self) -> int:
        return self.steps_per_epoch * self.cfg.train.accumulation

    def _epoch_done(self) -> bool:
        return self.batch_in_epoch >= self.batches_per_epoch

    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _group_lrs(self) -> dict:
        """The learning rate of every parameter group, when there are several (release scheme)."""
        groups = self.optimizer.param_groups
        return {f"lr/{g.get('name', i)}": float(g["lr"]) for i, g in enumerate(groups)} if len(groups) > 1 else {}

    def _optimizer_step(self, batches) -> torch.Tensor:
        """Accumulate `train.accumulation` forward/backward passes, then step; returns summed losses."""
        env, t = self.env, self.cfg.train
        self.scheduler.step_update(self.step)
        sums = torch.zeros(3, device=env.device)
        for micro in range(t.accumulation):
            batch = next(batches)
            video = batch["video"].to(env.device, non_blocking=True)
            labels = batch["label"].to(env.device, non_blocking=True)
            if self.augment is not None:    # data.augment=device: uint8 clips, the recipe here (own step generator)
                video, labels = self.augment(video, batch["size"], labels,
                                             generator=step_generator(t.seed, self.step, micro, env.rank, 1))
            video, targets = self.mixup(video, labels, generator=step_generator(t.seed, self.step, micro, env.rank))
            last = micro == t.accumulation - 1
            with self.ddp.no_sync() if env.distributed and not last else contextlib.nullcontext():
                with autocast(self.amp, env.device):
                    out = self.ddp(video, **self.text.kwargs())
                cls_loss = soft_cross_entropy(out.logits, targets)
                align_loss = out.align_losses.float().sum()
                loss = cls_loss + t.align_loss_weight * align_loss
                value = float(loss.detach())
                if dist.any_true(not math.isfinite(value), env):
                    self._diverged(value)
                self.scaler.scale(loss / t.accumulation).backward()
            sums += torch.stack([loss.detach(), cls_loss.detach(), align_loss.detach()]) / t.accumulation
            self.batch_in_epoch += 1
        if t.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]], t.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return sums

    def _diverged(self, value: float) -> None:
        last = stored.latest_checkpoint(self.run_dir)
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
        raise TrainingDiverged(f"loss is {value} at step {self.step + 1} (epoch {self.epoch + 1}); "
                               f"stopped without applying it, {kept}")

    def _end_epoch(self) -> None:
        """Save the epoch's checkpoint first, then validate: a validation that fails or is killed loses no
        training (a resumed run validates that epoch again before it goes on)."""
        t = self.cfg.train
        finished = self.epoch
        self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        self.validation_pending = self.val_samples is not None and (
            self.epoch % t.eval_every_epochs == 0 or self.epoch == t.epochs)
        self.save()
        if self.validation_pending:
            self._validate(finished)

    def _validate(self, epoch: int) -> None:
        if self.env.distributed:                     # rank 0's BatchNorm statistics everywhere, as saved
            for buffer in self.model.buffers():
                torch.distributed.broadcast(buffer, 0)
        try:
            metrics, *_, skipped = evaluate_split(self.model, self.cfg, self.env, self.class_names, self.text,
                                                  clips=1, crops=1, amp=self.amp, progress=self.env.main)
        except UserError as e:
            raise UserError(f"validation after epoch {epoch + 1}: {e}; the epoch's training is saved in "
                            f"{stored.latest_checkpoint(self.run_dir)}: fix this, then continue with "
                            f"--resume {self.run_dir}") from None
        self.reporter.log(self.step, epoch=epoch + 1, val_top1=metrics["top1"], val_top5=metrics["top5"],
                          val_mean_class_acc=metrics["mean_class_acc"])
        if self.env.main:
            print(f"epoch {epoch + 1}: val top-1 {metrics['top1']:.2f}%, top-5 {metrics['top5']:.2f}%, "
                  f"mean class {metrics['mean_class_acc']:.2f}% ({metrics['videos']} videos"
                  + (f", {len(skipped)} unreadable skipped)" if skipped else ")"))
        if self.best_top1 is None or metrics["top1"] > self.best_top1:
            self.best_top1, self.best_epoch = metrics["top1"], epoch + 1
            if self.env.main:
                ckpt.save_checkpoint(self.run_dir / "best.pt", self.model, self.cfg, self.class_names,
                                     metrics={"top1": metrics["top1"], "top5": metrics["top5"],
                                              "videos": metrics["videos"], "epoch": epoch + 1, "step": self.step})
        self.validation_pending = False

    def _report_bad_files(self) -> None:
        """Bad files the loader skipped in this pass (each process reports its own)."""
        skipped = self.loader.skipped
        if skipped.count:
            print(f"epoch {self.epoch + 1} (process {self.env.rank}): {skipped.summary()}")
            self.reporter.log(self.step, epoch=self.epoch + 1, skipped_videos=skipped.count)


def _valid_top1(value) -> bool:
    """A best top-1 that is a real result (not None, not NaN)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def initial_model(cfg: Config) -> nn.Module:
    """A model for the config with `train.init` weights: `auto` (the preset's CLIP, if it names one), `none`
    (fresh initialisation), or any source `ila.create_model` reads: an ila checkpoint or run directory, a
    pretrained folder / .safetensors file / Hub repo id, a release checkpoint, or CLIP weights (a file or an
    open_clip name such as ViT-B-32:openai). `train.init_parts=tower` takes only the image tower."""
    init = cfg.train.init
    if init == "auto":
        init = PRESETS[cfg.preset].clip if cfg.preset in PRESETS else ""
    if init in ("", "none"):
        if cfg.train.init_parts == "tower":
            raise UserError(f"train.init_parts=tower takes the image tower from an ila checkpoint, but train.init "
                            f"is {printable(init or 'none')}; set train.init to one (e.g. a pretraining run's "
                            f"checkpoint)")
        return build_model(cfg.model)
    return load_model(init, cfg, parts=cfg.train.init_parts, quiet=True)[0].train()


def describe_init(cfg: Config) -> str:
    """Where `initial_model` takes the weights from, in words (the first line of a run)."""
    init = cfg.train.init
    if init == "auto":
        clip = PRESETS[cfg.preset].clip if cfg.preset in PRESETS else ""
        return (f"CLIP {clip} through open_clip (train.init=auto: preset {cfg.preset}'s)" if clip
                else "fresh initialisation (train.init=auto: no pretrained weights for this model)")
    if init in ("", "none"):
        return "fresh initialisation (train.init=none)"
    if Path(init).exists():
        return f"{Path(init).resolve()} (train.init)"

    if is_hub_id(init):
        return f"the Hub model {init} (train.init)"
    return f"CLIP {init} through open_clip (train.init)"


def check_files_exist(cfg: Config, splits: dict[str, list]) -> None:
    """Before any training: every video of the lists must exist. Missing ones are an error (counted, the first
    few named), or, with `data.bad_files=skip`, a warning (they are skipped when read)."""
    for split, samples in splits.items():
        missing = [s.path for s in samples if not os.path.exists(s.path)]
        if not missing:
            continue
        listed = getattr(cfg.data, f"{split}_list")
        names = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        what = f"{len(missing)} of {len(samples)} videos of data.{split}_list ({listed}) do not exist ({names})"
        if cfg.data.bad_files == "skip":
            print(f"warning: {what}; they will be skipped (data.bad_files=skip)")
            continue
        raise UserError(f"{what}; fix data.root or the list, or set data.bad_files=skip to train without them")


def train(cfg: Config, resume: str | Path | None = None) -> Path:
    """Train (or continue) the run described by `cfg`; returns the run directory. The main process holds the
    run directory's lock (`ila.engine.runlock`) for the whole run."""
    dist.stop_with_launcher()
    env = dist.setup(cfg.device)
    lock = RunLock(run_dir_of(cfg)).acquire() if env.main else None
    try:
        return Trainer(cfg, env, resume).run()
    finally:
        if lock is not None:
            lock.release()
        dist.cleanup()


def resume_config(resume: str | Path, overrides: list[str] | tuple = ()) -> Config:
    """The config saved in a checkpoint (or run directory), with `--set` overrides applied."""
    state = stored.read_checkpoint(resume, resume=True)
    require_complete(state.get("config"), str(resume))    # never fill a saved model's gaps with defaults
    cfg = load_config(state["config"], overrides) if overrides else config_from_dict(state["config"])
    check_model_fits(cfg.model, state["model"], resume)      # before a model that size is built
    if not any(o.startswith("output=") for o in overrides):   # continue where the checkpoint lies
        cfg.output = str(resume if Path(resume).is_dir() else Path(resume).parent)
    return cfg
