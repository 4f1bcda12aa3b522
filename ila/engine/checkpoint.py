"""`ila`'s own checkpoints, written: one file holds the weights, the full config, the class names and the
preprocessing record (the format and its reader: `ila.weights.checkpoint`), saved atomically.

A training run keeps `checkpoint-STEP.pt` files (the last `train.keep_last`) and `best.pt`; the RNG states of
every generator the loop draws from travel in the training state, so a resumed run is bit-exact.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ila.atomic import atomic_path
from ila.config import Config
from ila.data.preprocessing import Preprocessing
from ila.errors import UserError
from ila.weights.checkpoint import FORMAT, step_checkpoints


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
             "preprocessing": Preprocessing.of(config).to_dict(), "model": unwrap(model).state_dict(),
             "train_state": train_state}
    if metrics is not None:
        state["metrics"] = dict(metrics)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


# ----------------------------------------------------------------------------------------- run directory

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
    """Restore what `rng_state` saved. The state is checked field by field when the checkpoint is read
    (`ila.weights.checkpoint._check_train_state`); anything a generator still refuses (a CUDA state of another
    size) is one UserError line, and nothing is restored then."""
    field = "torch"
    try:
        saved = (torch.get_rng_state(), np.random.get_state(), random.getstate())
        try:
            torch.set_rng_state(state["torch"])
            field = "numpy"
            has_gauss, gauss = state["numpy_gauss"]
            np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), int(state["numpy_pos"]),
                                 int(has_gauss), float(gauss)))
            field = "python"
            gauss_next = state.get("python_gauss")
            random.setstate((int(state["python_version"]), tuple(int(v) for v in state["python"].tolist()),
                             None if gauss_next is None else float(gauss_next)))
            if "cuda" in state and torch.cuda.is_available():
                field = "cuda"
                torch.cuda.set_rng_state(state["cuda"])
        except BaseException:
            torch.set_rng_state(saved[0])
            np.random.set_state(saved[1])
            random.setstate(saved[2])
            raise
    except (KeyError, TypeError, ValueError, RuntimeError, OverflowError, AttributeError) as e:
        raise UserError(f"the checkpoint's {field} random generator state cannot be restored "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}); "
                        f"the run cannot continue exactly") from None
