"""One typed configuration for training, evaluation and prediction.

A run is described by four sections, each a dataclass: `model` (`ila.models.config.ModelConfig`, filled
from a preset named by `model.preset`), `data`, `train` and `eval`, plus a few top-level keys. A config
comes from a YAML file or a preset name, then `--set section.key=value` overrides; values are coerced to
the field's type and checked, and a mistake is one `UserError` line naming the key and what is allowed.

Frames and resolution: `data.num_frames` and `data.input_size` drive `model.num_frames` and
`model.image_resolution`. Left empty they follow the model (its preset); given, they set the model's
values; given on both sides with different values, the config is rejected.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import reprlib
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Sequence

import yaml

from ila.data.annotations import format_choices
from ila.data.decode import DECODERS
from ila.errors import UserError
from ila.labels import BUILTIN
from ila.models.config import ModelConfig
from ila.models.registry import temporal_variants
from ila.presets import PRESETS, did_you_mean, get_preset, preset_name
from ila.registry import Registry

# train.schedule's values: registered by the engine's optimizer factory (ila.engine.optim), where they are built
SCHEDULES = Registry("schedule", key="train.schedule", builtin=("ila.engine.optim",))


@dataclass
class DataConfig:
    """Where the videos are and how clips are drawn from them."""

    root: str = ""                          # folder the annotation paths are relative to
    train_list: str = ""                    # training annotations (Kinetics list/CSV, SSv2 JSON, ...)
    val_list: str = ""                      # validation annotations (`ila eval`, per-epoch validation)
    class_names: str | list[str] | None = None  # class-name file, or the names as a YAML list
    format: str = "auto"                    # annotation format: auto or a registered one (ANNOTATION_FORMATS)
    val_split: float = 0.0                  # hold out this fraction of a train_list folder for validation
    num_frames: int | None = None           # frames per clip; empty: the model's
    input_size: int | None = None           # crop side in pixels; empty: the model's resolution
    sampling: Literal["segment", "dense"] = "segment"  # release: one frame per equal segment
    frame_interval: int = 4                 # dense sampling stride
    bad_files: Literal["auto", "skip", "error"] = "auto"  # unreadable videos; auto: skip in training, error in eval
    workers: int = 2                        # loader processes per training process
    grayscale: float = 0.2                  # chance a training clip is turned grey (release recipe: 0.2)
    augment: Literal["cpu", "device"] = "cpu"  # training recipe in the loader workers, or batched on the training device
    decoder: str = "pyav"                   # video decoder, a registered one (DECODERS; torchcodec: optional
                                            # extra, system FFmpeg; torchcodec-cuda: on the GPU, data.workers=0)
    decoder_threads: int = 1                # FFmpeg threads per decoder (0: FFmpeg picks); 1 pays best per core
    cache: Literal["none", "memory"] = "none"  # memory: decode every video once, serve clips from memory
    recipe: Literal["release", "crop"] = "release"  # training clips: release recipe, or random crops only


@dataclass
class TrainConfig:
    """The training recipe; the defaults are the release's."""

    init: str = "auto"                      # start weights: auto (the preset's CLIP), none, a CLIP file/name,
                                            # an ila checkpoint or a release checkpoint
    init_parts: Literal["all", "tower"] = "all"  # tower: take only the image tower from an ila checkpoint
    epochs: int = 30
    batch_size: int = 8                     # clips per process per forward pass
    accumulation: int = 1                   # forward passes per optimizer step
    lr: float = 8e-6                        # base learning rate (release groups scale from it)
    weight_decay: float = 3e-3              # base weight decay (release: MIT group 3e-3)
    optimizer_groups: Literal["release", "uniform"] = "release"  # uniform: one lr/wd for all (from scratch)
    schedule: str = "cosine"                # per-step lr after the warm-up: a registered schedule (SCHEDULES)
    warmup_epochs: float = 5.0              # linear warm-up from 0 (then the schedule; release: cosine to lr / 100)
    mixup: float = 0.8                      # mixup alpha (0: off)
    cutmix: float = 1.0                     # cutmix alpha (0: off)
    mixup_switch_prob: float = 0.5          # chance of cutmix instead of mixup for a batch
    label_smoothing: float = 0.1
    align_loss_weight: float = 1.0          # weight of the summed per-block alignment losses
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"  # auto: bf16 (else fp16) on GPU, off on CPU
    compile: bool = False                   # train through torch.compile (first steps slower while it compiles)
    clip_grad: float = 0.0                  # max gradient norm (0: no clipping)
    sync_bn: bool = False                   # synchronise alignment BatchNorm across GPUs (DDP on GPU only)
    seed: int = 0
    save_every_steps: int = 0               # extra checkpoints every N optimizer steps (0: epochs only)
    keep_last: int = 2                      # step/epoch checkpoints kept besides best.pt
    eval_every_epochs: int = 1              # validate on data.val_list every N epochs (0: never)
    log_every_steps: int = 10               # metrics.jsonl / TensorBoard interval
    stop_at_step: int = 0                   # stop (after a checkpoint) at this optimizer step; 0: run all
    wandb: str = ""                         # Weights & Biases project to log to as well (pip install ila[wandb])


@dataclass
class EvalConfig:
    """How videos are scored: views per video and the release's evaluation quirk."""

    clips: int = 1                          # temporal views per video
    crops: Literal[1, 3] = 1                # spatial views: centre crop, or three along the long side
    batch_size: int = 8                     # videos per forward pass
    release_bn_quirk: bool = False          # reproduce the Kinetics release: alignment BN on batch stats


@dataclass
class Config:
    """Everything a run needs; saved in the run directory and in every checkpoint."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    preset: str | None = None               # the preset that filled `model` (written as model.preset)
    name: str = "run"                       # run name (default output: runs/NAME)
    output: str | None = None               # run directory
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def to_dict(self) -> dict:
        d = {"model": {"preset": self.preset, **self.model.to_dict()}}
        for section in ("data", "train", "eval"):
            d[section] = dataclasses.asdict(getattr(self, section))
        d.update(name=self.name, output=self.output, device=self.device)
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "eval": EvalConfig}
# keys whose allowed values are what a registry holds when the config is read (a variant registered later counts)
REGISTERED_CHOICES = {"model.temporal": temporal_variants, "train.schedule": SCHEDULES.names,
                      "data.format": format_choices, "data.decoder": DECODERS.names}
_TOP = ("name", "output", "device")
_INT64 = 2**63
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_REPR = reprlib.Repr()                      # bounded repr of values in error lines
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict = 2, 4, 4
# what a checkpoint's saved model section must spell out: everything that shapes the weights or the outputs
# (a missing key would silently take the default, e.g. build the default large model)
REQUIRED_MODEL_KEYS = ("image_resolution", "vision_patch_size", "vision_width", "vision_layers", "embed_dim",
                       "context_length", "vocab_size", "transformer_width", "transformer_layers", "quick_gelu",
                       "num_frames", "temporal", "interactive_block", "mi_token", "align_hidden", "point_hidden",
                       "head", "num_classes", "mit_layers", "mit_pos_embed", "prompts_layers", "prompts_alpha")


# ----------------------------------------------------------------------------------------- coercion

def _describe(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is list:
        return "a list"
    return {type(None): "none", bool: "true/false", int: "an integer", float: "a finite number",
            str: "a string"}.get(tp, str(tp))


class _TooLarge(ValueError):
    """An integer past int64."""


def _coerce_one(value: Any, tp) -> Any:
    """Value converted to `tp`, or ValueError. Strings (from --set or loose YAML) are parsed."""
    origin = typing.get_origin(tp)
    if tp is type(None):
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null", "~")):
            return None
        raise ValueError
    if origin in (typing.Union, types.UnionType):
        members = sorted(typing.get_args(tp), key=lambda a: a is str)  # try str last: it accepts anything
        if isinstance(value, str):                   # a string stays a string (e.g. a path), never a list
            members = [m for m in members if typing.get_origin(m) is not list]
        for member in members:
            try:
                return _coerce_one(value, member)
            except ValueError:
                continue
        raise ValueError
    if origin is Literal:
        for allowed in typing.get_args(tp):
            if isinstance(value, bool) != isinstance(allowed, bool):
                continue                             # true is not 1
            if value == allowed or (isinstance(value, str) and value == str(allowed)):
                return allowed
        raise ValueError
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ValueError
        return [_coerce_one(v, typing.get_args(tp)[0]) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise ValueError
    if tp is int:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        elif isinstance(value, str):
            if len(value.strip()) > 40 and value.strip().lstrip("+-").isdigit():
                raise _TooLarge                      # before int() spends time on thousands of digits
            value = int(value)
        if not isinstance(value, int):
            raise ValueError
        if not -_INT64 <= value < _INT64:            # past int64 nothing downstream (torch, numpy) can hold it
            raise _TooLarge
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError
        number = float(value)                        # OverflowError for a huge int: a ValueError's kin
        if not math.isfinite(number):                # inf, nan, 1e999: no run can use them
            raise ValueError
        return number
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            text = str(value)
            if "\0" in text or _SURROGATE.search(text):  # no path or UTF-8 file can hold a NUL or a lone
                raise ValueError                     # surrogate (undecodable bytes in argv)
            return text
        raise ValueError
    raise ValueError


def coerce(key: str, value: Any, tp) -> Any:
    """`value` as type `tp` for config key `key`; a UserError naming the key and the allowed values."""
    try:
        return _coerce_one(value, tp)
    except (ValueError, TypeError, OverflowError) as e:
        shown = _shown(value)
        allowed = f"{_describe(tp)} between -2**63 and 2**63 - 1" if isinstance(e, _TooLarge) else _describe(tp)
        raise UserError(f"{key}={shown} is not allowed; use {allowed}") from None


def _apply(obj, section: str, values: dict) -> None:
    hints = typing.get_type_hints(type(obj))
    known = [f.name for f in fields(obj)]
    for key, value in values.items():
        if section == "model" and key == "fast":  # saved before ila.fuse: the fast path is now the one forward
            continue
        if key not in hints:
            raise UserError(f"unknown config key '{section}.{key}'; {section} keys are: {', '.join(known)}"
                            + did_you_mean(key, known).replace("'", f"'{section}.", 1))
        registered = REGISTERED_CHOICES.get(f"{section}.{key}")
        if registered is not None and not (isinstance(value, str) and value in registered()):
            raise UserError(f"{section}.{key}={_shown(value)} is not allowed; use one of {', '.join(registered())}")
        setattr(obj, key, coerce(f"{section}.{key}", value, hints[key]))


# ----------------------------------------------------------------------------------------- loading

def _set_dotted(raw: dict, assignment: str) -> None:
    if "=" not in assignment:
        raise UserError(f"--set {_shown(assignment)}: write it as section.key=value, e.g. train.lr=1e-3")
    key, value = assignment.split("=", 1)
    _check_key(key.strip(), "--set ")
    parts = key.strip().split(".")
    if len(parts) == 1 and parts[0] in _TOP:
        raw[parts[0]] = value
        return
    if len(parts) != 2 or parts[0] not in _SECTIONS:
        every = [row[0] for row in config_keys()]
        raise UserError(f"unknown config key '{key}'; keys look like section.key with section one of "
                        f"{', '.join(_SECTIONS)} (or top-level {', '.join(_TOP)}){did_you_mean(key.strip(), every)}")
    section = raw.setdefault(parts[0], {}) or {}
    if not isinstance(section, dict):
        raise UserError(f"--set {key.strip()}: config section '{parts[0]}' must be a mapping of keys to values, "
                        f"not {_a(section)}")
    raw[parts[0]] = section
    section[parts[1]] = value


def _read_source(source: str | Path) -> tuple[dict, str]:
    """Raw nested dict and a run name from a YAML path or a preset name."""
    path = Path(source)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if path.is_dir():
            raise UserError(f"config file {path} is a directory; give the YAML file")
        if not path.is_file():
            raise UserError(f"config file {path} does not exist")
        try:
            raw = yaml.safe_load(path.read_bytes().decode("utf-8-sig"))
        except OSError as e:
            raise UserError(f"config file {path}: cannot read ({e.strerror})") from None
        except UnicodeDecodeError as e:
            raise UserError(f"config file {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            what = " ".join(str(getattr(e, "problem", None) or e).split())[:160]
            raise UserError(f"config file {where}: not valid YAML ({what})") from None
        except RecursionError:
            raise UserError(f"config file {path}: nested too deeply to be a config") from None
        except ValueError as e:                      # e.g. an integer of more than 4300 digits
            raise UserError(f"config file {path}: cannot be read ({str(e).split(';')[0][:120]})") from None
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise UserError(f"config file {path} must hold a mapping of sections (model, data, train, eval), "
                            f"not {_a(raw)}")
        return _absolute_paths(raw, path.resolve().parent), path.stem

    name = preset_name(str(source))
    if name is None:
        raise UserError(f"--config {_shown(str(source))} is neither a YAML file nor a preset; presets: "
                        f"{', '.join(PRESETS)}" + did_you_mean(source, list(PRESETS)))
    return {"model": {"preset": name}}, name


# paths a config may hold: in a YAML file they are relative to the file's folder, in --set to the current one
_PATH_KEYS = {"data": ("root", "train_list", "val_list", "class_names"), "train": ("init",)}
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def _absolute(key: str, value, base: Path):
    """`value` of path key `key` made absolute against `base`; names that are not paths stay as they are
    (train.init auto/none/open_clip names, class names written as `a,b,c`)."""
    if not isinstance(value, str) or not value.strip():
        return value
    candidate = Path(base) / os.path.expanduser(value.strip())
    try:
        exists = candidate.exists()
    except (OSError, ValueError):                  # a name too long for the system, a NUL byte: not a file here
        exists = False
    if key == "init":
        pathlike = "/" in value or value.endswith(_WEIGHT_SUFFIXES)
        if value in ("auto", "none") or (not exists and (":" in value or not pathlike)):
            return value
    if key == "class_names" and not exists:
        if "," in value or value.strip().lower() in BUILTIN:    # names, or a shipped list (`kinetics400`)
            return value
    return os.path.abspath(candidate)


def _absolute_paths(raw: dict, base: Path) -> dict:
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for section, keys in _PATH_KEYS.items():
        values = raw.get(section)
        if isinstance(values, dict):
            for key in keys:
                if key in values:
                    values[key] = _absolute(key, values[key], base)
    return raw


def require_complete(raw: Any, source: str | None = None) -> None:
    """A saved config (a checkpoint's) must name every model key in REQUIRED_MODEL_KEYS: filling the gaps
    from defaults would build another model than the one whose weights were saved. source: the file, for
    the message."""
    at = f"{source}: " if source else ""
    if not isinstance(raw, dict):
        raise UserError(f"{at}the saved config is {_a(raw)}, not a mapping of sections; the file is damaged or "
                        f"not written by ila")
    model = raw.get("model")
    if not isinstance(model, dict):
        raise UserError(f"{at}the saved config has no model section; the file is damaged or incomplete")
    missing = [k for k in REQUIRED_MODEL_KEYS if k not in model]
    if missing:
        raise UserError(f"{at}the saved config lacks {len(missing)} model key(s) ({', '.join(missing[:4])}"
                        f"{', ...' if len(missing) > 4 else ''}); the file is damaged or incomplete, so the model "
                        f"it describes cannot be rebuilt")


def config_from_dict(raw: dict, name: str | None = None, complete: bool = False,
                     source: str | None = None) -> Config:
    """Build and validate a Config from a nested dict (YAML, a checkpoint's config, overrides applied).

    complete: `raw` is a saved config (a checkpoint's), which must spell out the model (`require_complete`);
    source names it in that error."""
    if complete:
        require_complete(raw, source)
    if not isinstance(raw, dict):
        raise UserError(f"a config must be a mapping of sections (model, data, train, eval), not {_a(raw)}")
    raw = dict(raw)
    for key, value in raw.items():
        _check_key(key)
        for sub in value if key in _SECTIONS and isinstance(value, dict) else ():
            _check_key(sub, f"{key}.")
    unknown = sorted(map(str, set(raw) - set(_SECTIONS) - set(_TOP)))
    if unknown:
        raise UserError(f"unknown config key '{unknown[0]}'; top-level keys are: {', '.join([*_SECTIONS, *_TOP])}")
    for section in _SECTIONS:
        if not isinstance(raw.get(section) or {}, dict):
            raise UserError(f"config section '{section}' must be a mapping of keys to values")
    cfg = Config()
    model_raw = dict(raw.get("model") or {})
    preset = model_raw.pop("preset", None)
    recipe: dict = {}
    data_recipe: dict = {}
    if preset not in (None, "", "none", "None"):
        if not isinstance(preset, str) or preset_name(preset) is None:
            raise UserError(f"model.preset={_shown(preset)} is not allowed; use one of {', '.join(PRESETS)}"
                            + (did_you_mean(preset, list(PRESETS)) if isinstance(preset, str) else ""))
        preset = preset_name(preset)
        cfg.model = get_preset(preset)
        cfg.preset = str(preset)
        recipe = PRESETS[preset].recipe            # the preset's own training recipe under what is given
        data_recipe = PRESETS[preset].data_recipe
    _apply(cfg.model, "model", model_raw)
    _apply(cfg.train, "train", {k: v for k, v in recipe.items() if k not in (raw.get("train") or {})})
    _apply(cfg.data, "data", {k: v for k, v in data_recipe.items() if k not in (raw.get("data") or {})})
    for section in ("data", "train", "eval"):
        _apply(getattr(cfg, section), section, raw.get(section) or {})
    hints = typing.get_type_hints(Config)
    for key in _TOP:                                 # top-level keys are named without a section
        if key in raw:
            setattr(cfg, key, coerce(key, raw[key], hints[key]))
    if name and "name" not in raw:
        cfg.name = name
    _link_data_to_model(cfg, explicit=set(model_raw))
    validate(cfg)
    return cfg


def load_config(source: str | Path | dict | None = None, overrides: Sequence[str] = (),
                complete: bool = False) -> Config:
    """The config of a YAML file, a preset name or a dict (default: all defaults), with `--set` overrides.
    complete: the source is a saved config, checked by `require_complete` before the overrides apply."""
    if isinstance(source, dict):
        raw, name = source, None
    elif source is None:
        raw, name = {}, None
    elif isinstance(source, (str, Path)):
        raw, name = _read_source(source)
    else:
        if complete:
            require_complete(source)                 # names the saved config's type
        raise UserError(f"a config is a mapping of sections, a YAML file or a preset name, not {_a(source)}")
    if complete:
        require_complete(raw)
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    given: dict = {}
    for assignment in overrides:
        _set_dotted(given, assignment)
    for section, values in given.items():
        if isinstance(values, dict):
            values = _absolute_paths({section: values}, Path.cwd())[section]
            present = raw.get(section) or {}
            if not isinstance(present, dict):
                raise UserError(f"--set {section}.{next(iter(values))}: config section '{section}' must be a mapping "
                                f"of keys to values, not {_a(present)}")
            raw[section] = {**present, **values}
        else:
            raw[section] = values
    # a new data.num_frames / data.input_size given alone also sets the model's (e.g. an 8-frame checkpoint
    # evaluated at 16 frames: the position embeddings are resampled when the weights are loaded)
    for data_key, model_key in (("num_frames", "num_frames"), ("input_size", "image_resolution")):
        if data_key in (given.get("data") or {}) and model_key not in (given.get("model") or {}) \
                and isinstance(raw.get("model"), dict) and model_key in raw["model"]:
            raw["model"] = {**raw["model"], model_key: given["data"][data_key]}
    cfg = config_from_dict(raw, name)
    if not isinstance(source, dict) and not cfg.data.root and (cfg.data.train_list or cfg.data.val_list):
        cfg.data.root = os.getcwd()   # relative entries of a list are read from here: saved as an absolute path
    return cfg


def _link_data_to_model(cfg: Config, explicit: set[str]) -> None:
    """data.num_frames / data.input_size drive model.num_frames / model.image_resolution."""
    for data_key, model_key in (("num_frames", "num_frames"), ("input_size", "image_resolution")):
        data_value, model_value = getattr(cfg.data, data_key), getattr(cfg.model, model_key)
        if data_value is None:
            setattr(cfg.data, data_key, model_value)
        elif model_key in explicit and data_value != model_value:
            raise UserError(f"data.{data_key}={data_value} disagrees with model.{model_key}={model_value}; "
                            f"set one of them (data.{data_key} drives model.{model_key})")
        else:
            setattr(cfg.model, model_key, data_value)


def _a(value) -> str:
    """'a list', 'an int', ...: the kind of a value that is not what was expected."""
    kind = type(value).__name__
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"


def _shown(value) -> str:
    """A value for an error line: its repr, cut short (reprlib bounds the work on huge or nested values)."""
    text = _REPR.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_key(key: Any, prefix: str = "") -> None:
    """A key that cannot be a config key at all (not a short printable string) is refused before it is
    echoed in a message."""
    if not isinstance(key, str) or len(key) > 100 or not key.isprintable():
        raise UserError(f"{prefix}{_shown(key)} is not a config key; keys look like section.key, e.g. train.lr")


def _check(ok: bool, key: str, value, allowed: str) -> None:
    if not ok:
        raise UserError(f"{key}={_shown(value)} is not allowed; use {allowed}")


def validate(cfg: Config) -> Config:
    """Range checks that types alone cannot express; the model config checks itself."""
    t, e, d = cfg.train, cfg.eval, cfg.data
    for key, value in (("train.epochs", t.epochs), ("train.batch_size", t.batch_size),
                       ("train.accumulation", t.accumulation), ("eval.clips", e.clips),
                       ("eval.batch_size", e.batch_size), ("data.num_frames", d.num_frames),
                       ("data.input_size", d.input_size), ("data.frame_interval", d.frame_interval),
                       ("train.log_every_steps", t.log_every_steps), ("train.keep_last", t.keep_last)):
        _check(value >= 1, key, value, "an integer >= 1")
    for key, value in (("train.lr", t.lr),):
        _check(value > 0, key, value, "a number > 0")
    for key, value in (("train.weight_decay", t.weight_decay), ("train.warmup_epochs", t.warmup_epochs),
                       ("train.mixup", t.mixup), ("train.cutmix", t.cutmix), ("train.clip_grad", t.clip_grad),
                       ("train.align_loss_weight", t.align_loss_weight), ("data.workers", d.workers),
                       ("train.save_every_steps", t.save_every_steps), ("train.stop_at_step", t.stop_at_step),
                       ("train.eval_every_epochs", t.eval_every_epochs)):
        _check(value >= 0, key, value, "a number >= 0")
    for key, value in (("train.label_smoothing", t.label_smoothing), ("train.mixup_switch_prob", t.mixup_switch_prob),
                       ("data.grayscale", cfg.data.grayscale)):
        _check(0 <= value <= 1, key, value, "a number in [0, 1]")
    _check(0 <= d.val_split < 1, "data.val_split", d.val_split, "a fraction in [0, 1), e.g. 0.2")
    _check(t.warmup_epochs <= t.epochs, "train.warmup_epochs", t.warmup_epochs, f"at most train.epochs={t.epochs}")
    _check(0 <= t.seed < 2**32, "train.seed", t.seed, "an integer in [0, 4294967295]")  # numpy's seed range
    _check(d.workers <= 256, "data.workers", d.workers, "an integer in [0, 256]")
    _check(0 <= d.decoder_threads <= 64, "data.decoder_threads", d.decoder_threads,
           "an integer in [0, 64] (1: one thread per decoder, best with many loader workers; 0: FFmpeg picks)")
    if d.decoder == "torchcodec-cuda":              # GPU decoding runs in the training process, frames stay there
        _check(d.workers == 0, "data.workers", d.workers, "0 with data.decoder=torchcodec-cuda (it decodes in the "
               "training process: CUDA cannot be used in forked loader workers), or data.decoder=torchcodec")
        _check(d.cache == "none", "data.cache", d.cache, "none with data.decoder=torchcodec-cuda (the memory cache "
               "holds CPU frames), or data.decoder=torchcodec")
        _check(cfg.device != "cpu", "device", cfg.device, "auto or cuda with data.decoder=torchcodec-cuda, or "
               "data.decoder=torchcodec to decode on the CPU")
    # past these, index arithmetic overflows int64 (frame_interval 2**62 sampled frames from the end) or views
    # fill memory; no video has a stride of 10 000 frames or needs 1000 temporal views
    _check(d.frame_interval <= 10_000, "data.frame_interval", d.frame_interval, "an integer in [1, 10000]")
    _check(e.clips <= 1000, "eval.clips", e.clips, "an integer in [1, 1000]")
    if isinstance(d.class_names, list):
        names = [n.strip() for n in d.class_names]
        _check(bool(names) and all(names), "data.class_names", d.class_names, "a non-empty list of non-empty names")
        seen: set[str] = set()
        twice = next((n for n in names if n in seen or seen.add(n)), None)
        _check(twice is None, "data.class_names", d.class_names, f"distinct names ({_shown(twice)} appears twice)")
    _check(bool(cfg.name.strip()), "name", cfg.name, "a non-empty run name")
    cfg.model.validate()
    return cfg


def config_keys() -> list[tuple[str, str, str]]:
    """(key, type, default) of every documented key, for the README table and `--help`."""
    rows = [("model.preset", "preset name", "none")]
    for section, cls in _SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            registered = REGISTERED_CHOICES.get(f"{section}.{f.name}")
            kind = "one of " + ", ".join(registered()) if registered else _describe(hints[f.name])
            rows.append((f"{section}.{f.name}", kind, str(default)))
    hints = typing.get_type_hints(Config)
    for key in _TOP:
        rows.append((key, _describe(hints[key]), str(getattr(Config(), key))))
    return rows
