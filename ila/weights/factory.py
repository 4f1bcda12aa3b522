"""One way from weights to a model: `create_model(PRESET_OR_CONFIG, weights=SOURCE, parts=...)`.

    model = ila.create_model("ila-b32-8f-k400", weights="ViT-B-32.pt")    # CLIP towers, new video modules
    model = ila.create_model(weights="runs/demo")                          # an ila run: its best.pt
    model = ila.create_model(weights="ORG/NAME")                           # a pretrained folder on the Hub
    model = ila.create_model(weights="k400_b32_8.pth")                     # the authors' release
    model = ila.create_model("tiny", weights="runs/pretrain", parts="tower")   # only the image tower

A reader (`ila.weights.sources`) turns the source into a `WeightsRecord`; `load_model` decides the config (the
record's own when none is given; a given config must agree with what the weights determine), counts the model
on the meta device before anything is allocated (`check_model_fits`), builds it and puts the record into it
with `load_record` (position embeddings resampled to other frame counts and sizes, one strict key check).
Every model comes back in eval mode, carrying `class_names`, `preprocessing`, `config` and `source`.
`from_clip`, `load_release`, `load_checkpoint`, `from_pretrained` and `train.init` are thin wrappers.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from torch import nn

from ila.config import Config, config_from_dict, load_config
from ila.data.preprocessing import Preprocessing
from ila.errors import UserError, printable
from ila.models.config import ModelConfig
from ila.models.ila import ILAModel, parameter_group, parameter_group_map
from ila.models.resample import fit_position_embeddings
from ila.safe_load import held_bytes
from ila.weights.sources import WeightsRecord, read_weights

Parts = Literal["all", "tower"]
_MODEL_ALLOWANCE = 256 << 20    # bytes of float32 parameters any model may have, whatever its weights file holds
_MODEL_RATIO = 8                # otherwise: at most this many times the bytes of weights the file supplied
# model keys that are free to differ from the weights' own: resampled (frames, size) or not shaping any tensor
_FREE_KEYS = {"num_frames", "image_resolution", "align_delta", "drop_path", "prompts_alpha", "classifier_dropout",
              "freeze_clip", "train_prompts", "grad_checkpointing"}


def check_model_fits(cfg: ModelConfig, tensors: dict, source: Any) -> None:
    """Refuse to build the model `cfg` describes when its parameters would take far more memory than the weights
    it is built from (`tensors`): shapes such as `(65536, 3, 8, 0)` hold no bytes but declare a huge model, and a
    config.json may name any size. The model is counted on the meta device, so nothing is allocated."""
    with torch.device("meta"):
        model = ILAModel(cfg)
    need = 4 * sum(t.numel() for t in list(model.parameters()) + list(model.buffers()))
    have = held_bytes(tensors)
    if need > _MODEL_RATIO * have + _MODEL_ALLOWANCE:
        raise UserError(f"{printable(source)}: its weights describe a model of {need / 2 ** 30:.1f} GiB, far more "
                        f"than the {have / 2 ** 20:.1f} MiB of weights it holds; refusing to build it")


def tower_keys(model: nn.Module, image_only: bool = False) -> set[str]:
    """The state-dict keys of the pretrained CLIP towers (the `clip` group: what no video block declares its own
    and no head holds); `image_only`: the image tower's alone."""
    return {k for k, g in parameter_group_map(model, buffers=True).items()
            if g == "clip" and (k.startswith("visual.") or not image_only)}


def load_record(model: nn.Module, record: WeightsRecord, parts: Parts = "all") -> nn.Module:
    """Put a record's weights into `model` (in place): position embeddings resampled to the model's frames and
    size, then one strict check. `parts="all"`: every tensor of the model (CLIP weights: every tower tensor; the
    video modules and head keep their initialisation); `"tower"`: only the image tower's, the rest stays as it
    is. A mismatch is a one-line UserError naming the source and the first offending tensor."""
    own = model.state_dict()
    theirs = fit_position_embeddings(record.state_dict, model)
    if parts == "tower":
        required = tower_keys(model, image_only=True)
        groups = parameter_group_map(model, buffers=True)      # the weights' own keys: by name where not the model's
        given = {k for k in theirs if k.startswith("visual.") and groups.get(k, parameter_group(k)) == "clip"}
        theirs = {k: theirs[k] for k in given}
    elif record.tower_only:
        required = tower_keys(model)
        if getattr(model, "text", None) is None:          # a classifier has no text tower: CLIP's goes unused
            theirs = {k: v for k, v in theirs.items() if not (k.startswith("text.") or k == "logit_scale")}
    else:
        required = set(own)
    missing = sorted(required - set(theirs))
    unexpected = sorted(set(theirs) - set(own) if parts != "tower" else set(theirs) - required)
    wrong = sorted(k for k in theirs if k in own and own[k].shape != theirs[k].shape)
    if missing or unexpected or wrong:
        what = (f"shape of {wrong[0]} is {tuple(theirs[wrong[0]].shape)}, the config builds "
                f"{tuple(own[wrong[0]].shape)}" if wrong else
                f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}")
        part = "its image tower does not" if parts == "tower" else "weights do not"
        raise UserError(f"{record.source}: {part} fit the config ({what}; {len(missing)} missing, "
                        f"{len(unexpected)} unexpected, {len(wrong)} of another shape)")
    model.load_state_dict(theirs, strict=required == set(own))
    return model


def _as_config(model: Any, overrides: Sequence[str]) -> Config:
    if isinstance(model, Config):
        return load_config(model.to_dict(), overrides) if overrides else model
    if isinstance(model, ModelConfig):
        return load_config({"model": model.to_dict()}, overrides)
    if isinstance(model, (str, os.PathLike, dict)):
        return load_config(model, overrides)
    raise UserError(f"a model is a preset name, a YAML file, a Config or a ModelConfig, not a {type(model).__name__}")


def _agree(cfg: ModelConfig, record: WeightsRecord) -> None:
    """A given config must build what the weights are: every key they determine (but frames and size, which are
    resampled) takes their value."""
    for key, value in record.model.items():
        if key in _FREE_KEYS or key == "preset" or not hasattr(cfg, key):
            continue
        if getattr(cfg, key) != value:
            raise UserError(f"{record.source}: the weights have {key}={value!r} but the config says "
                            f"model.{key}={getattr(cfg, key)!r}")


def _setting(key: str, value: Any) -> str:
    """A model keyword as a `--set` assignment (frames and size are driven by the data section)."""
    section_key = {"num_frames": "data.num_frames", "image_resolution": "data.input_size"}.get(key, f"model.{key}")
    text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value).lower() \
        if isinstance(value, bool) else str(value)
    return f"{section_key}={text}"


def load_model(weights: Any = None, model: Any = None, parts: Parts = "all", overrides: Sequence[str] = (),
               device: str | torch.device = "cpu", **kwargs) -> tuple[ILAModel, Config, WeightsRecord | None]:
    """(model in eval mode, its run config, the record read) — what `create_model` returns the first of.
    `overrides`: `--set` assignments; `kwargs`: reader options (`revision`, `cache_dir`, `num_frames`, `variant`,
    `resume`, `quiet`)."""
    if parts not in ("all", "tower"):
        raise UserError(f"parts={parts!r}: use all or tower")
    try:
        record = read_weights(weights, **kwargs) if weights is not None else None
    except UserError as e:
        if parts != "tower":
            raise
        raise UserError(f"parts=tower takes the image tower from an ila checkpoint or pretrained folder; "
                        f"{printable(str(weights))} is not one ({e})") from None
    if model is None and record is None:
        raise UserError("give a preset or config to build, and/or weights to load")
    if model is not None:
        cfg = _as_config(model, overrides)
        if record is not None and parts == "all":
            _agree(cfg.model, record)
    elif record.complete:
        raw = dict(record.config or {"model": record.model})
        if record.preprocessing is not None:        # the preprocessing record sets the clips the model is fed
            for section, values in record.preprocessing.config_sections().items():
                raw[section] = {**(raw.get(section) or {}), **values}
        try:
            cfg = load_config(raw, overrides) if overrides else config_from_dict(raw)
        except UserError as e:
            raise UserError(f"{record.source}: {e}") from None
        _agree(cfg.model, record)                  # an override may change frames and size, not the weights' shapes
    else:
        cfg = load_config({"model": {**ModelConfig().to_dict(), **record.model}}, overrides)
    if record is not None and parts == "tower" and record.kind != "checkpoint" and record.kind != "pretrained":
        raise UserError(f"parts=tower takes the image tower from an ila checkpoint or pretrained folder, but "
                        f"{record.source} is {record.kind} weights")
    if record is not None:
        check_model_fits(cfg.model, record.state_dict, record.source)      # before a model that size is built
    net = ILAModel(cfg.model)
    if record is not None:
        load_record(net, record, parts)
    net.class_names = list(record.class_names) if record is not None and parts == "all" else []
    net.preprocessing = Preprocessing.of(cfg)
    net.config = cfg
    net.source = record.provenance if record is not None else ""
    return net.to(device).eval(), cfg, record


def create_model(model: Any = None, weights: Any = None, parts: Parts = "all", overrides: Sequence[str] = (),
                 device: str | torch.device = "cpu", **model_kwargs) -> ILAModel:
    """A model of a preset, YAML file or config (`model`), with weights from `weights`: an ila checkpoint or run
    directory, a pretrained folder / `.safetensors` file / Hub repo id, an authors' release checkpoint, or CLIP
    weights (a file or a name such as `ViT-B-32:openai`). Either may be left out: a preset alone builds fresh
    weights; weights alone build the model they describe. `parts="tower"`: only the image tower is taken from
    the weights. `overrides`: `--set` assignments (`data.num_frames=16`); `model_kwargs`: model config keys
    (`num_frames=16`, `temporal="mean"`). Returned in eval mode."""
    settings = list(overrides) + [_setting(k, v) for k, v in model_kwargs.items()]
    return load_model(weights, model, parts, settings, device)[0]


# ----------------------------------------------------------------------------------------- thin wrappers

def from_clip(weights: Any, cfg: ModelConfig | None = None, **overrides) -> ILAModel:
    """An ILA model whose CLIP towers start from CLIP weights; the new modules keep their release initialisation.
    `weights`: an OpenAI `.pt`, an open_clip file, a state dict, or a pretrained name such as `ViT-B-32:openai`.
    The geometry is read from the weights; `cfg` (e.g. a preset) and `overrides` set the rest (frames, head,
    classes, ...); an `image_resolution` override resamples the spatial position embedding."""
    record = read_weights(weights, kind="clip")
    base = {**(cfg or ModelConfig()).to_dict(), **record.model, **overrides}
    return load_model(record, ModelConfig.from_dict(base))[0]


def load_release(source: str | os.PathLike | dict, num_frames: int | None = None,
                 variant: str | None = None) -> ILAModel:
    """The authors' released weights (a release checkpoint file or a bare state dict) as an ILA model.
    `variant`: `k400` or `ssv2` (default: from the keys); `num_frames`: default the checkpoint's."""
    return load_model(read_weights(source, kind="release", num_frames=num_frames, variant=variant))[0]


def load_checkpoint(path: str | Path, overrides: Sequence[str] = (), device: str | torch.device = "cpu"):
    """An `ila` checkpoint, run directory or pretrained folder -> (model, config, class_names), the model in eval
    mode; `overrides`: `--set` assignments."""
    model, cfg, record = load_model(path, overrides=overrides, device=device)
    return model, cfg, list(record.class_names)


def from_pretrained(name_or_dir: str | Path, revision: str | None = None, device: str | torch.device = "cpu",
                    cache_dir: str | Path | None = None) -> ILAModel:
    """The model of a shared folder, a `.safetensors` file or a Hugging Face Hub repo id `ORG/NAME` (`revision`:
    a branch, tag or commit; `HF_HUB_OFFLINE=1`: from the cache only), in eval mode, carrying `class_names`,
    `config` and `preprocessing`; `ila.save_pretrained(model, DIR)` writes it back out."""
    return load_model(name_or_dir, device=device, revision=revision, cache_dir=cache_dir)[0]
