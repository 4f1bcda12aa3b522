"""ila's own checkpoints, read: one file holds the weights, the full config, the class names and the preprocessing.

    {"format": "ila-checkpoint/1", "config": {...}, "class_names": [...], "model": state_dict,
     "preprocessing": {...} (`ila.data.preprocessing`; older files: derived from the config),
     "train_state": None | {"epoch", "batch_in_epoch", "step", "align_delta", "best_top1",
                            "optimizer", "scaler", "rng": [per-process RNG states]},
     "metrics": {...} (best.pt: the validation that made it)}

Read with `ila.safe_load` (no code in the file runs) and checked entry by entry. A run directory means one thing
everywhere: its `best.pt` where it exists, else the newest `checkpoint-STEP.pt` that loads (said in one line on
stderr); resuming (`resume=True`) takes the newest step checkpoint, which holds the training state.
(`ila.engine.checkpoint` writes these files.)
"""
from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import torch

from ila import safe_load
from ila.config import config_from_dict, require_complete
from ila.data.preprocessing import Preprocessing
from ila.errors import UserError, printable
from ila.weights.sources import Probe, WeightsRecord, register_reader

FORMAT = "ila-checkpoint/1"
BEST = "best.pt"
_STEP_FILE = re.compile(r"^checkpoint-(\d+)\.pt$")


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


def is_run_dir(path: str | Path) -> bool:
    """A folder holding an ila run's checkpoints (best.pt or checkpoint-STEP.pt)."""
    path = Path(path)
    return path.is_dir() and ((path / BEST).is_file() or latest_checkpoint(path) is not None)


def newest_readable(run_dir: str | Path, resume: bool = False) -> tuple[Path, dict] | None:
    """(path, state) of the newest `checkpoint-STEP.pt` that loads; each newer one that does not is named on
    stderr with its reason and skipped. None when the run has no step checkpoint; a UserError when none loads."""
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


def run_checkpoint(run_dir: str | Path, resume: bool = False, quiet: bool = False) -> tuple[Path, dict]:
    """(path, state) of the checkpoint a run directory stands for: for inference its best.pt where it exists,
    else the newest step checkpoint that loads; for `resume` the newest step checkpoint that loads. Which one
    is said in one line on stderr (unless `quiet`)."""
    run_dir = Path(run_dir)
    best = run_dir / BEST
    if not resume and best.is_file():
        state = read_checkpoint(best)
        metrics = state.get("metrics") or {}
        why = (f"the best validation top-1, {metrics['top1']:.2f} % at epoch {metrics.get('epoch')}"
               if isinstance(metrics.get("top1"), (int, float)) else "the run's best")
        if not quiet:
            print(f"{printable(run_dir)}: using {BEST} ({why})", file=sys.stderr)
        return best, state
    found = newest_readable(run_dir, resume=resume)
    if found is None:
        raise UserError(f"{printable(run_dir)} holds no checkpoint (checkpoint-*.pt or {BEST})")
    if not quiet and not resume:
        print(f"{printable(run_dir)}: no {BEST} (no validation ran); using {found[0].name}, the newest checkpoint "
              f"that loads", file=sys.stderr)
    return found


def best_metrics(run_dir: str | Path) -> dict | None:
    """The validation result recorded in the run's `best.pt` (top1, epoch, step), or None."""
    path = Path(run_dir) / BEST
    if not path.is_file():
        return None
    try:
        metrics = safe_load.load(path, weights=False).get("metrics")      # the tensors are not read
    except Exception:  # noqa: BLE001 - an unreadable best.pt records nothing; it is rewritten when beaten
        return None
    return metrics if isinstance(metrics, dict) and isinstance(metrics.get("top1"), (int, float)) else None


# ----------------------------------------------------------------------------------------- one file

def read_checkpoint(path: str | Path, resume: bool = False) -> dict:
    """The raw dict of an `ila` checkpoint file or run directory, read safely and checked: its `config`, `model`,
    `class_names` and `train_state` have the types `save_checkpoint` writes, and with `resume=True` the training
    state has everything a resume restores. A UserError for anything else."""
    path = Path(path)
    if path.is_dir():
        return run_checkpoint(path, resume=resume, quiet=True)[1]
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
    if "preprocessing" in state:
        try:
            Preprocessing.from_dict(state["preprocessing"], printable(path))
        except UserError as e:
            _fail(path, str(e))
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
_UINT32 = 1 << 32
_MT_WORDS = 624                                   # the Mersenne Twister's state: 624 words and a position


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value) -> bool:
    return _is_number(value) and (isinstance(value, int) or math.isfinite(value))


def _cpu_tensor(value, dtype: torch.dtype, numel: int | None = None) -> bool:
    """A plain, one-dimensional CPU tensor of `dtype` (and `numel` elements), as `rng_state` stores them."""
    return (type(value) is torch.Tensor and value.dtype == dtype and value.layout == torch.strided
            and value.device.type == "cpu" and value.dim() == 1 and not value.requires_grad
            and (numel is None or value.numel() == numel) and not value.__dict__)


def _in_range(t: torch.Tensor, low: int, high: int) -> bool:
    return t.numel() == 0 or (int(t.min()) >= low and int(t.max()) < high)


def _check_train_state(ts: dict, path) -> None:
    """Every field a resume uses (`Trainer._restore`, `ila.engine.checkpoint.set_rng_state`), checked for its exact
    type (no subclasses: the pickle may set attributes on those), its length, dtype and range, so a damaged or
    crafted training state is one line here, never a traceback or an abort later."""
    if type(ts) is not dict:
        _fail(path, f"`train_state` is a {_kind(ts)}, not a plain mapping")
    for key, kind in _TRAIN_STATE.items():
        if key not in ts:
            _fail(path, f"`train_state` has no `{key}`, so the run cannot be resumed")
        value = ts[key]
        ok = _finite(value) if kind is _NUMBER else type(value) is kind
        if not ok or (kind is int and value < 0) or (key == "steps_per_epoch" and value < 1):
            _fail(path, f"`train_state.{key}` is a {_kind(value)}"
                        f"{' ' + repr(value)[:20] if _is_number(value) else ''}, not a "
                        f"{'finite number' if kind is _NUMBER else kind.__name__}{' >= 0' if kind is int else ''}")
    for key, test, want in (("best_top1", _is_number, "a number"), ("best_epoch", _is_int, "an integer"),
                            ("validation_pending", lambda v: type(v) is bool, "true or false"),
                            ("world", _is_int, "an integer"), ("total_steps", _is_int, "an integer")):
        value = ts.get(key)
        if value is not None and (not test(value) or (want == "an integer" and value < 0)):
            _fail(path, f"`train_state.{key}` is a {_kind(value)}, not {want}")
    _check_optimizer(ts["optimizer"], path)
    _check_scaler(ts["scaler"], path)
    rngs = ts["rng"]
    if not rngs:
        _fail(path, "`train_state.rng` is empty")
    if ts.get("world") is not None and ts["world"] != len(rngs):
        _fail(path, f"`train_state.rng` holds {len(rngs)} processes' states, but `world` says {ts['world']}")
    for i, rng in enumerate(rngs):
        _check_rng(rng, f"train_state.rng[{i}]", path)


def _check_rng(rng, where: str, path) -> None:
    if type(rng) is not dict:
        _fail(path, f"`{where}` is a {_kind(rng)}, not a plain mapping")
    for key, kind in _RNG.items():
        value = rng.get(key)
        if not (type(value) in kind if isinstance(kind, tuple) else type(value) is kind):
            _fail(path, f"`{where}.{key}` is missing or a {_kind(value)}")
    broken = None
    gauss = rng["numpy_gauss"]
    if not _cpu_tensor(rng["torch"], torch.uint8, torch.get_rng_state().numel()):
        broken = "torch"
    elif not _cpu_tensor(rng["numpy"], torch.int64, _MT_WORDS) or not _in_range(rng["numpy"], 0, _UINT32):
        broken = "numpy"
    elif not 0 <= rng["numpy_pos"] <= _MT_WORDS:
        broken = "numpy_pos"
    elif len(gauss) != 2 or type(gauss[0]) is not int or gauss[0] not in (0, 1) or not _is_number(gauss[1]):
        broken = "numpy_gauss"
    elif not _cpu_tensor(rng["python"], torch.int64, _MT_WORDS + 1) or not _in_range(rng["python"][:-1], 0, _UINT32) \
            or not 0 <= int(rng["python"][-1]) <= _MT_WORDS:
        broken = "python"
    elif rng["python_version"] != 3:
        broken = "python_version"
    elif "python_gauss" not in rng or not (rng["python_gauss"] is None or type(rng["python_gauss"]) is float):
        broken = "python_gauss"
    elif "cuda" in rng and not (_cpu_tensor(rng["cuda"], torch.uint8) and rng["cuda"].numel() > 0):
        broken = "cuda"
    if broken is not None:
        _fail(path, f"`{where}.{broken}` does not hold a random generator's state (wrong type, length or values)")


def _check_optimizer(opt, path) -> None:
    bad = "`train_state.optimizer` is not an optimizer state"
    if type(opt) is not dict or type(opt.get("state")) is not dict or type(opt.get("param_groups")) is not list:
        _fail(path, f"{bad} (`state` and `param_groups`)")
    for i, group in enumerate(opt["param_groups"]):
        if type(group) is not dict or type(group.get("params")) is not list or \
                not all(_is_int(p) and p >= 0 for p in group["params"]):
            _fail(path, f"{bad}: param_groups[{i}] does not list its parameters by number")
        for key, value in group.items():
            if key == "params":
                continue
            ok = (value is None or type(value) in (bool, str) or _finite(value)
                  or (type(value) in (tuple, list) and all(_finite(v) for v in value)))
            if not ok or (key in ("lr", "eps", "weight_decay", "initial_lr") and not _is_number(value)) or \
                    (key == "betas" and (type(value) not in (tuple, list) or len(value) != 2)):
                _fail(path, f"{bad}: param_groups[{i}].{printable(str(key))[:40]} is a {_kind(value)}")
    for index, entry in opt["state"].items():
        if not _is_int(index) or type(entry) is not dict or not all(
                type(k) is str and (_is_number(v) or (type(v) is torch.Tensor and not v.__dict__
                                                      and v.layout == torch.strided))
                for k, v in entry.items()):
            _fail(path, f"{bad}: its state for parameter {printable(repr(index))[:20]} is not a mapping of names to "
                        f"tensors")


def _check_scaler(scaler, path) -> None:
    if type(scaler) is not dict:
        _fail(path, f"`train_state.scaler` is a {_kind(scaler)}, not a plain mapping")
    kinds = {"scale": _is_number, "growth_factor": _is_number, "backoff_factor": _is_number,
             "growth_interval": _is_int, "_growth_tracker": _is_int}
    if scaler and (set(scaler) != set(kinds) or not all(kinds[k](v) and _finite(v) for k, v in scaler.items())):
        _fail(path, "`train_state.scaler` is not a loss scaler's state (scale, growth_factor, backoff_factor, "
                    "growth_interval, _growth_tracker)")


def provenance(state: dict, path) -> str:
    """Where a checkpoint's weights came from, in words (model cards)."""
    if state.get("source"):
        return state["source"]
    ts = state.get("train_state") or state.get("metrics") or {}
    if isinstance(ts, dict) and "step" in ts:
        return (f"trained with ila (run {state['config'].get('name', 'run')}, epoch {ts.get('epoch')}, "
                f"step {ts.get('step')})")
    return f"the ila checkpoint {Path(str(path)).name} (weights only)"


def record_of(state: dict, path: Path, source: str) -> WeightsRecord:
    """The `WeightsRecord` of a checked checkpoint dict."""
    config = state["config"]
    pre = (Preprocessing.from_dict(state["preprocessing"], printable(path)) if "preprocessing" in state
           else Preprocessing.of(config_from_dict(config)))
    model = {k: v for k, v in config["model"].items() if k != "preset"}
    return WeightsRecord("checkpoint", source, state["model"], model, config=config,
                         class_names=list(state.get("class_names") or []), preprocessing=pre,
                         train_state=state.get("train_state"), metrics=state.get("metrics"),
                         evaluation=state.get("evaluation"), provenance=provenance(state, path), path=path)


def _is_checkpoint(probe: Probe) -> bool:
    if probe.is_dir():
        return is_run_dir(probe.path)
    if not probe.is_file() or probe.path.suffix.lower() == ".safetensors":
        return False
    if probe.path.suffix.lower() == ".pt" and _STEP_FILE.match(probe.path.name) or probe.path.name == BEST:
        return True                            # read (and refused with its reason) as what it must be
    content = probe.content()
    return isinstance(content, dict) and content.get("format") == FORMAT


@register_reader("checkpoint", _is_checkpoint, "an ila checkpoint (.pt) or run directory", order=10)
def read(probe: Probe, resume: bool = False, quiet: bool = False, **_) -> WeightsRecord:
    """An ila checkpoint file or run directory (best.pt, else the newest step checkpoint that loads)."""
    if probe.is_dir():
        path, state = run_checkpoint(probe.path, resume=resume, quiet=quiet)
    else:
        path = probe.path if probe.path is not None else Path(str(probe.text))
        if probe.path is not None and probe._done:
            state = probe.content()
            if not isinstance(state, dict) or state.get("format") != FORMAT:
                return read_checkpoint(path, resume)  # raises the reason
            check_checkpoint(state, path, resume)
        else:
            state = read_checkpoint(path, resume)
    return record_of(state, path, str(probe.text))
