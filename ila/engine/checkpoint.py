"""`ila`'s own checkpoints: one file holds the weights, the full config and the class names.

The file is a plain dict of tensors and Python values, saved atomically and read back with `ila.safe_load`
(a restricted reader: loading never executes pickled code) and checked entry by entry; it needs no other input:

    {"format": "ila-checkpoint/1", "config": {...}, "class_names": [...], "model": state_dict,
     "train_state": None | {"epoch", "batch_in_epoch", "step", "align_delta", "best_top1",
                            "optimizer", "scaler", "rng": [per-process RNG states]}}

A training run keeps `checkpoint-STEP.pt` files (the last `train.keep_last`) and `best.pt`.
"""
from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ila import safe_load
from ila.config import Config, config_from_dict, require_complete
from ila.engine.atomic import atomic_path
from ila.errors import UserError, printable

FORMAT = "ila-checkpoint/1"
_STEP_FILE = re.compile(r"^checkpoint-(\d+)\.pt$")


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel (or compiled) wrapper."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def save_checkpoint(path: str | Path, model: nn.Module, config: Config, class_names: list[str] | None,
                    train_state: dict | None = None, metrics: dict | None = None) -> Path:
    """Write a checkpoint atomically (temporary file, then `os.replace`); `metrics`: the validation result
    that made it (`best.pt`: top1, epoch, step)."""
    if getattr(unwrap(model), "fused", ()):
        raise UserError("this model is fused for inference (ila.fuse): its tensors are folded, not the trained ones; "
                        "save the unfused model")
    state = {"format": FORMAT, "config": config.to_dict(), "class_names": list(class_names or []),
             "model": unwrap(model).state_dict(), "train_state": train_state}
    if metrics is not None:
        state["metrics"] = dict(metrics)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def read_checkpoint(path: str | Path, resume: bool = False) -> dict:
    """The raw dict of an `ila` checkpoint, read safely (`ila.safe_load`: no pickled code runs) and checked: its
    `config`, `model`, `class_names` and `train_state` have the types `save_checkpoint` writes, and with
    `resume=True` the training state has everything a resume restores. A UserError for anything else."""
    from ila.hub import read_pretrained

    if (shared := read_pretrained(path)) is not None:  # a shared folder, .safetensors file or Hub repo id
        check_checkpoint(shared, path, resume)
        return shared
    path = Path(path)
    if path.is_dir():
        found = newest_readable(path, resume=resume)
        if found is not None:
            return found[1]
        if not (path / "best.pt").is_file():
            raise UserError(f"{printable(path)} holds no checkpoint (checkpoint-*.pt or best.pt)")
        path = path / "best.pt"
    if not path.exists():
        raise UserError(f"checkpoint {printable(path)} does not exist")
    try:
        state = safe_load.load(path)
    except safe_load.FileRefused:
        raise
    except safe_load.FileUnreadable as e:
        raise UserError(f"{e.path} is not a readable ila checkpoint ({e.reason}); a release checkpoint "
                        f"must first be converted with `ila convert`") from None
    if isinstance(state, safe_load.ScriptObject):
        raise UserError(f"{printable(path)} is a TorchScript archive (CLIP weights?), not an ila checkpoint; use it "
                        f"as train.init to start training from it")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{printable(path)} is not an ila checkpoint; convert release checkpoints with `ila convert`")
    check_checkpoint(state, path, resume)
    return state


def _fail(path, what: str):
    raise UserError(f"{printable(path)}: damaged ila checkpoint: {what}")


def _kind(value) -> str:
    return type(value).__name__


def check_checkpoint(state: dict, path: str | Path = "checkpoint", resume: bool = False) -> None:
    """Refuse (one line) an ila checkpoint dict whose entries are missing or of the wrong type."""
    config = state.get("config")
    require_complete(config, printable(path))      # never fill a saved model's gaps with defaults
    try:
        config_from_dict(config)
    except UserError as e:
        _fail(path, f"its config is invalid ({e})")
    model = state.get("model")
    if not isinstance(model, dict) or not model:
        _fail(path, f"`model` must be a non-empty mapping of names to tensors (found {_kind(model)})")
    bad = next((k for k, v in model.items() if not isinstance(k, str) or not torch.is_tensor(v)), None)
    if bad is not None:
        _fail(path, f"`model` entry {printable(repr(bad))[:60]} is not a named tensor")
    names = state.get("class_names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        _fail(path, f"`class_names` must be a list of strings (found {_kind(names)})")
    ts = state.get("train_state")
    if ts is not None and not isinstance(ts, dict):
        _fail(path, f"`train_state` must be a mapping or None (found {_kind(ts)})")
    if resume:
        if ts is None:
            raise UserError(f"{printable(path)} holds weights only (no training state) and cannot be resumed")
        _check_train_state(ts, path)


_NUMBER = (int, float)
_TRAIN_STATE = {"epoch": int, "batch_in_epoch": int, "step": int, "steps_per_epoch": int, "align_delta": _NUMBER,
                "optimizer": dict, "scaler": dict, "rng": list}
_RNG = {"torch": torch.Tensor, "numpy": torch.Tensor, "numpy_pos": int, "numpy_gauss": (tuple, list),
        "python": torch.Tensor, "python_version": int}


def _check_train_state(ts: dict, path) -> None:
    for key, kind in _TRAIN_STATE.items():
        if key not in ts:
            _fail(path, f"`train_state` has no `{key}`, so the run cannot be resumed")
        if not isinstance(ts[key], kind) or isinstance(ts[key], bool) or \
                (kind is int and ts[key] < 0):
            _fail(path, f"`train_state.{key}` is a {_kind(ts[key])}, not a {getattr(kind, '__name__', 'number')}"
                        f"{' >= 0' if kind is int else ''}")
    if ts.get("best_top1") is not None and not isinstance(ts["best_top1"], _NUMBER):
        _fail(path, f"`train_state.best_top1` is a {_kind(ts['best_top1'])}, not a number")
    opt = ts["optimizer"]
    if not isinstance(opt.get("state"), dict) or not isinstance(opt.get("param_groups"), list) or \
            not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in opt["param_groups"]):
        _fail(path, "`train_state.optimizer` is not an optimizer state (`state` and `param_groups`)")
    if not ts["rng"]:
        _fail(path, "`train_state.rng` is empty")
    for i, rng in enumerate(ts["rng"]):
        if not isinstance(rng, dict):
            _fail(path, f"`train_state.rng[{i}]` is a {_kind(rng)}, not a mapping")
        for key, kind in _RNG.items():
            if not isinstance(rng.get(key), kind):
                _fail(path, f"`train_state.rng[{i}].{key}` is missing or a {_kind(rng.get(key))}")
        if rng["torch"].dtype != torch.uint8 or rng["torch"].dim() != 1 or len(rng["numpy_gauss"]) != 2 \
                or rng["numpy"].shape != (624,) or rng["python"].shape != (625,):
            _fail(path, f"`train_state.rng[{i}]` does not hold the random generators' states")


def load_checkpoint(path: str | Path, overrides: list[str] | tuple = (), device: str | torch.device = "cpu"):
    """(model, config, class_names, raw dict) of a checkpoint; `overrides` are `--set` assignments."""
    from ila.config import load_config
    from ila.models import build_model

    state = read_checkpoint(path)
    require_complete(state.get("config"), str(path))      # never fill a saved model's gaps with defaults
    config = load_config(state["config"], overrides) if overrides else config_from_dict(state["config"])
    safe_load.check_model_fits(config.model, state["model"], path)
    model = build_model(config.model)
    from ila.models.resample import fit_position_embeddings   # other frame counts / sizes than trained at

    load_weights(model, fit_position_embeddings(state["model"], model), path)
    return model.to(device), config, list(state.get("class_names") or []), state


def load_weights(model: nn.Module, state_dict: dict, source: str | Path = "checkpoint") -> None:
    """Load weights strictly; a mismatch between config and weights is a one-line UserError."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [k for k in own if k in state_dict and own[k].shape != state_dict[k].shape]
    if missing or unexpected or wrong:
        what = (f"shape of {wrong[0]} is {tuple(state_dict[wrong[0]].shape)}, the config builds "
                f"{tuple(own[wrong[0]].shape)}" if wrong else
                f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}")
        raise UserError(f"{source}: weights do not fit the config ({what}; {len(missing)} missing, "
                        f"{len(unexpected)} unexpected, {len(wrong)} of another shape)")
    model.load_state_dict(state_dict)


# ----------------------------------------------------------------------------------------- run directory

def step_checkpoints(run_dir: str | Path) -> list[Path]:
    """The run's `checkpoint-STEP.pt` files, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := _STEP_FILE.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = step_checkpoints(run_dir)
    return found[-1] if found else None


def newest_readable(run_dir: str | Path, resume: bool = False) -> tuple[Path, dict] | None:
    """(path, state) of the newest `checkpoint-STEP.pt` that loads; each newer one that does not is named on
    stderr with its reason and skipped. None when the run has no step checkpoint; a UserError when none loads."""
    import sys

    found = step_checkpoints(run_dir)
    reasons = []
    for path in reversed(found):
        try:
            state = read_checkpoint(path, resume=resume)
        except UserError as e:
            reasons.append(f"{path.name} ({e})")
            print(f"skipping unreadable checkpoint {path}: {e}", file=sys.stderr)
            continue
        return path, state
    if reasons:
        raise UserError(f"no checkpoint in {run_dir} can be read: {'; '.join(reasons)[:400]}")
    return None


def best_metrics(run_dir: str | Path) -> dict | None:
    """The validation result recorded in the run's `best.pt` (top1, epoch, step), or None."""
    path = Path(run_dir) / "best.pt"
    if not path.is_file():
        return None
    try:
        metrics = safe_load.load(path, weights=False).get("metrics")      # the tensors are not read
    except Exception:  # noqa: BLE001 - an unreadable best.pt records nothing; it is rewritten when beaten
        return None
    return metrics if isinstance(metrics, dict) and isinstance(metrics.get("top1"), (int, float)) else None


def save_step_checkpoint(run_dir: str | Path, step: int, keep_last: int, model: nn.Module, config: Config,
                         class_names: list[str], train_state: dict) -> Path:
    """Save `checkpoint-STEP.pt` and delete all but the newest `keep_last` of them."""
    path = save_checkpoint(Path(run_dir) / f"checkpoint-{step:08d}.pt", model, config, class_names, train_state)
    for old in step_checkpoints(run_dir)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


# ----------------------------------------------------------------------------------------- RNG state

def rng_state() -> dict:
    """Every random generator the training loop draws from, as tensors (weights_only-safe)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": torch.from_numpy(keys.astype(np.int64)), "numpy_pos": int(pos),
             "numpy_gauss": (int(has_gauss), float(gauss)),
             "python": torch.tensor(py_state, dtype=torch.int64), "python_version": int(version),
             "python_gauss": py_gauss}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    has_gauss, gauss = state["numpy_gauss"]
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], has_gauss, gauss))
    random.setstate((state["python_version"], tuple(int(v) for v in state["python"].tolist()),
                     state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def describe(state: dict[str, Any]) -> str:
    """One line about a checkpoint, for logs."""
    ts = state.get("train_state") or {}
    where = f"epoch {ts['epoch']}, step {ts['step']}" if ts else "weights only"
    return f"{state['config'].get('name', 'run')} ({where}, {len(state.get('class_names') or [])} classes)"
