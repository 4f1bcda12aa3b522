"""Shareable models: a folder of `config.json` + `model.safetensors` + `README.md`, the form the Hugging Face Hub
serves, and `from_pretrained` for a local folder or a Hub repo id.

    model.save_pretrained("my-ila")                    # or: ila export --format hub --checkpoint C --out my-ila
    model = ila.from_pretrained("my-ila")              # a folder, a .safetensors file or "ORG/NAME" on the Hub
    model(video, ila.tokenize(model.class_names)).logits

`config.json` holds the model config, the class names and the preprocessing a clip needs (frames, size,
mean/std, sampling); `model.safetensors` the weights. Loading reads JSON and safetensors only, so it never
runs code, and checks every value's type: a malformed folder is a one-line `UserError`. A single
`.safetensors` file carries the same JSON in its metadata (`ila convert RELEASE.pth OUT.safetensors`).

Hub repo ids go through `huggingface_hub.snapshot_download` (its cache, `revision=`, and offline mode from the
cache when `HF_HUB_OFFLINE=1`); only `config.json`, `model.safetensors` and `README.md` are fetched.
"""
from __future__ import annotations

import json
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ila.errors import UserError

FORMAT = "ila-pretrained/1"
CONFIG_FILE, WEIGHTS_FILE, CARD_FILE = "config.json", "model.safetensors", "README.md"
_FILES = [CONFIG_FILE, WEIGHTS_FILE, CARD_FILE]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(@[\w./-]+)?$")
_FILE_SUFFIXES = (".pt", ".pth", ".safetensors", ".yaml", ".yml", ".json", ".ckpt", ".bin")


# ----------------------------------------------------------------------------------------- writing

def preprocessing(cfg) -> dict:
    """What a clip must look like for this model (`cfg`: an `ila.config.Config`)."""
    from ila.data.transforms import MEAN, STD

    return {"num_frames": cfg.data.num_frames, "input_size": cfg.data.input_size, "mean": list(MEAN),
            "std": list(STD), "pixel_range": 255, "channels": "RGB", "sampling": cfg.data.sampling,
            "frame_interval": cfg.data.frame_interval, "test_clips": cfg.eval.clips, "test_crops": cfg.eval.crops}


def pretrained_config(cfg, class_names: list[str] | None, source: str = "", evaluation: dict | None = None) -> dict:
    """The `config.json` of a model: everything needed to rebuild it and feed it clips."""
    from ila import __version__

    out = {"ila_format": FORMAT, "library_name": "ila", "ila_version": __version__, "architecture": "ILAModel",
           "preset": cfg.preset, "model": cfg.model.to_dict(), "class_names": list(class_names or []),
           "preprocessing": preprocessing(cfg), "source": source}
    if evaluation:
        out["evaluation"] = evaluation
    return out


def _run_config(model: nn.Module, config=None):
    """The `Config` to describe `model` with: the given one, the one it was loaded with, or its model config."""
    from ila.config import config_from_dict

    config = config if config is not None else getattr(model, "config", None)
    if config is None:
        config = config_from_dict({"model": model.cfg.to_dict()})
    if config.model != model.cfg:
        config = config_from_dict({**config.to_dict(), "model": {"preset": config.preset, **model.cfg.to_dict()}})
    return config


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    from ila.engine.checkpoint import unwrap

    return {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}


def _write_weights(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    from ila.engine.atomic import atomic_path

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def save_pretrained(model: nn.Module, directory: str | Path, class_names: list[str] | None = None, config=None,
                    source: str = "", evaluation: dict | None = None) -> Path:
    """Write `config.json`, `model.safetensors` and a `README.md` model card into `directory` (each file atomically;
    other files in the folder are kept). `class_names` default to the model's own (`model.class_names`)."""
    from ila.engine.atomic import write_text

    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UserError(f"{directory} is a file; give a folder to save the model in")
    config = _run_config(model, config)
    names = list(class_names if class_names is not None else getattr(model, "class_names", None) or [])
    _check_names(model, names)
    meta = pretrained_config(config, names, source or getattr(model, "source", "") or "", evaluation)
    _write_weights(directory / WEIGHTS_FILE, _tensors(model), {"format": "pt"})  # one key: byte-identical files
    write_text(directory / CONFIG_FILE, json.dumps(meta, indent=2) + "\n")
    write_text(directory / CARD_FILE, model_card(meta, directory.resolve().name))
    return directory


def save_safetensors_file(model: nn.Module, path: str | Path, class_names: list[str] | None = None, config=None,
                          source: str = "") -> Path:
    """One `.safetensors` file: the weights, with `config.json`'s content in its metadata."""
    config = _run_config(model, config)
    names = list(class_names if class_names is not None else getattr(model, "class_names", None) or [])
    _check_names(model, names)
    meta = pretrained_config(config, names, source)
    _write_weights(Path(path), _tensors(model), {"format": "pt", "ila_format": FORMAT, "ila_config": json.dumps(meta)})
    return Path(path)


def _check_names(model: nn.Module, names: list[str]) -> None:
    from ila.engine.classes import check_class_count

    if names:
        check_class_count(model, names, "class list")


def _blocks(model: dict) -> str:
    """The registered variant's description of the model's video blocks (the bare name if not registered here)."""
    from ila.models.registry import temporal_variants, temporal_variant

    name = model.get("temporal")
    return temporal_variant(name).describe(model) if name in temporal_variants() else str(name)


def model_card(meta: dict, name: str) -> str:
    """A README.md for the Hub: what the model is, where its weights came from, its results, how to load it."""
    m, p, names = meta["model"], meta["preprocessing"], meta["class_names"]
    head = ("video-text head (MIT + video-specific prompts against CLIP text features of the class names)"
            if m["head"] == "text" else f"classifier head ({m['num_classes']} outputs)")
    classes = (f"{len(names)} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})" if names
               else "none stored (give class names when predicting)")
    lines = ["---", "library_name: ila", "pipeline_tag: video-classification",
             "tags: [video-classification, action-recognition, ila, clip]", "---", "", f"# {name}", "",
             "An ILA video-recognition model (\"Implicit Temporal Modeling with Learnable Alignment for Video "
             "Recognition\", Tu et al., ICCV 2023, [arXiv 2304.10465](https://arxiv.org/abs/2304.10465); the authors' "
             "code: [Francis-Rings/ILA](https://github.com/Francis-Rings/ILA)), saved by `ila` "
             f"{meta['ila_version']} as `config.json` + `model.safetensors` (loading runs no code).", "",
             "| | |", "|---|---|",
             f"| architecture | CLIP ViT/{m['vision_patch_size']} image tower, width {m['vision_width']}, "
             f"{m['vision_layers']} {_blocks(m)}; {head} |",
             f"| preset | {meta['preset'] or 'none (a custom configuration)'} |",
             f"| input | {p['num_frames']} frames x {p['input_size']} x {p['input_size']} px RGB, {p['sampling']} "
             f"sampling; pixels 0-255 normalised with mean {p['mean']} / std {p['std']} |",
             f"| classes | {classes} |",
             f"| weights from | {meta.get('source') or 'not recorded'} |", "", "## Evaluation", ""]
    ev = meta.get("evaluation")
    if ev:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.2f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in ev.items()]
        lines += ["", "Measured by `ila` on the run's validation list with the views shown; not the paper's numbers."]
    else:
        lines += ["No evaluation results were recorded with these weights."]
    lines += ["", "## Use", "", "```python", "import ila",
              f'model = ila.from_pretrained("{name}")          # a local folder or a Hub repo id ORG/NAME',
              "logits = model(video, ila.tokenize(model.class_names)).logits" if m["head"] == "text" else
              "logits = model(video).logits                  # video: (B, T, 3, H, W), normalised as above",
              "```", "", "```bash",
              f"ila predict --checkpoint {name} video.mp4 --topk 5",
              f"ila features --checkpoint {name} videos/ --out features.safetensors", "```", ""]
    return "\n".join(lines)


def export_hub(checkpoint: str | Path, out: str | Path, classes: str | None = None) -> Path:
    """`ila export --format hub`: an ila checkpoint (or run directory, or shared folder) -> a shareable folder."""
    from ila.engine.checkpoint import load_checkpoint
    from ila.engine.classes import class_names_from

    model, cfg, names, state = load_checkpoint(checkpoint)
    names = class_names_from(classes) or names
    out = Path(out)
    if out.suffix == ".safetensors":
        save_safetensors_file(model, out, names, cfg, source=_source(checkpoint, state))
    else:
        save_pretrained(model, out, names, cfg, source=_source(checkpoint, state),
                        evaluation=_evaluation(checkpoint, state))
    print(f"{checkpoint} -> {out}: {', '.join(sorted(p.name for p in out.iterdir() if p.name in _FILES)) if out.is_dir() else out.name}"
          f" ({cfg.model.head} head, {len(names)} class names)")
    return out


def _source(checkpoint, state: dict) -> str:
    if state.get("source"):
        return state["source"]
    ts = state.get("train_state") or state.get("metrics") or {}
    if isinstance(ts, dict) and "step" in ts:
        return f"trained with ila (run {state['config'].get('name', 'run')}, epoch {ts.get('epoch')}, step {ts.get('step')})"
    return f"the ila checkpoint {Path(str(checkpoint)).name} (weights only)"


def _evaluation(checkpoint, state: dict) -> dict | None:
    """The run's `ila eval` results (eval/metrics.json beside the checkpoint), else its best validation top-1."""
    path = Path(str(checkpoint))
    run_dir = path if path.is_dir() else path.parent
    metrics = run_dir / "eval" / "metrics.json"
    if metrics.is_file():
        try:
            found = json.loads(metrics.read_text())
        except (OSError, ValueError):
            found = None
        if isinstance(found, dict):
            keep = ("videos", "top1", "top5", "mean_class_acc", "clips", "crops")
            return {k: found[k] for k in keep if isinstance(found.get(k), (int, float))}
    saved = state.get("metrics")                # best.pt: the validation that made it (one view per video)
    if isinstance(saved, dict) and isinstance(saved.get("top1"), (int, float)):
        return {f"validation {k} during training (1 view)" if k in ("top1", "top5") else k: v
                for k, v in saved.items() if isinstance(v, (int, float))}
    best = (state.get("train_state") or {}).get("best_top1")
    return {"best validation top1 during training (1 view)": float(best)} if isinstance(best, (int, float)) else None


# ----------------------------------------------------------------------------------------- reading

def is_hub_id(spec: str) -> bool:
    """Whether `spec` can only mean a Hub repo id `ORG/NAME[@REVISION]` (it is no local path)."""
    spec = str(spec)
    return (not os.path.exists(spec) and bool(_REPO_ID.match(spec)) and ".." not in spec
            and not spec.split("@")[0].lower().endswith(_FILE_SUFFIXES))


def resolve(name_or_dir: str | Path, revision: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """A local folder or `.safetensors` file as it is; a Hub repo id -> its snapshot folder in the Hub cache."""
    spec = str(name_or_dir)
    if os.path.exists(spec):
        return Path(spec)
    if not is_hub_id(spec):
        raise UserError(f"{spec}: no such file or folder (nor a Hugging Face Hub repo id ORG/NAME)")
    repo, _, at = spec.partition("@")
    revision = revision or at or None
    try:
        from huggingface_hub import constants, snapshot_download
    except ImportError:
        raise UserError(f"{spec} looks like a Hub repo id, but huggingface_hub is not installed "
                        f"(pip install huggingface_hub)") from None
    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    try:
        folder = snapshot_download(repo, revision=revision, cache_dir=cache_dir, allow_patterns=_FILES,
                                   local_files_only=offline, library_name="ila")
    except Exception as e:  # noqa: BLE001 - every Hub failure is one line for the user
        kind = type(e).__name__
        why = ("not in the local Hugging Face cache and HF_HUB_OFFLINE=1 forbids downloading" if offline
               and kind in ("LocalEntryNotFoundError", "OfflineModeIsEnabled") else
               f"not in the local Hugging Face cache and the Hub could not be reached ({_first_line(e)[:100]})"
               if kind == "LocalEntryNotFoundError" else
               "no such repository on the Hub (or it is private: log in with `hf auth login`)"
               if kind in ("RepositoryNotFoundError", "GatedRepoError") else
               f"no revision {revision!r} in the repository" if kind == "RevisionNotFoundError" else
               f"{kind}: {(str(e).strip().splitlines() or [''])[0][:160]}")
        raise UserError(f"Hub model {repo}{'@' + revision if revision else ''}: {why}") from None
    return Path(folder)


def read_pretrained(spec: str | Path, revision: str | None = None, cache_dir: str | Path | None = None) -> dict | None:
    """An ila-checkpoint dict (`ila.engine.checkpoint` format, no training state) from a shared folder, a
    `.safetensors` file or a Hub repo id; None when `spec` is none of these (an ila `.pt` or run directory)."""
    path = Path(str(spec))
    if path.is_dir():
        from ila.engine.checkpoint import latest_checkpoint

        ours = (path / CONFIG_FILE).exists() or (path / WEIGHTS_FILE).exists()
        if not ours or latest_checkpoint(path) or (path / "best.pt").is_file():   # a run directory stays one
            return None
    elif path.is_file():
        if path.suffix != ".safetensors":
            return None
    elif not is_hub_id(str(spec)):
        return None
    path = resolve(spec, revision, cache_dir)
    if path.is_file():
        return _read_file(path)
    return _read_folder(path)


def _read_folder(folder: Path) -> dict:
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise UserError(f"{folder} has no {name}: a shared ila model folder holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    where = folder / CONFIG_FILE
    try:
        meta = json.loads(where.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{where} is not a text file") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{where} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    return _checkpoint_dict(meta, _load_tensors(folder / WEIGHTS_FILE), where, folder.name)


def _read_file(path: Path) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{path} is not a readable safetensors file ({_first_line(e)})") from None
    if "ila_config" not in metadata:
        raise UserError(f"{path} has no ila config in its metadata (bare weights); write it with `ila convert` or "
                        f"`ila export --format hub`, or load the weights with safetensors yourself")
    try:
        meta = json.loads(metadata["ila_config"])
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: the ila config in its metadata is not valid JSON ({e.msg})") from None
    return _checkpoint_dict(meta, _load_tensors(path), path, path.stem)


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:160]


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{path} is not a readable safetensors file ({_first_line(e)})") from None


def _is(value: Any, tp) -> bool:
    """Strict JSON type check against a config field's annotation (no string -> number coercion)."""
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return any(_is(value, a) for a in typing.get_args(tp))
    if origin is list:
        return isinstance(value, list) and all(_is(v, typing.get_args(tp)[0]) for v in value)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if tp is str:
        return isinstance(value, str)
    return False


def _require(where, key: str, value: Any, tp) -> None:
    from ila.config import REGISTERED_CHOICES, _describe

    registered = REGISTERED_CHOICES.get(key)          # e.g. model.temporal: a registered variant's name
    if registered is not None and not (isinstance(value, str) and value in registered()):
        raise UserError(f"{where}: {key} must be one of {', '.join(registered())}, got {json.dumps(value)[:80]}")
    if not _is(value, tp):
        raise UserError(f"{where}: {key} must be {_describe(tp)}, got {json.dumps(value)[:80]}")


def _checkpoint_dict(meta: Any, tensors: dict[str, torch.Tensor], where, name: str) -> dict:
    """Validate a config.json's content and return the ila-checkpoint dict it describes."""
    from ila.config import DataConfig, EvalConfig, config_from_dict
    from ila.data.transforms import MEAN, STD
    from ila.engine.checkpoint import FORMAT as CHECKPOINT_FORMAT
    from ila.models.config import ModelConfig

    if not isinstance(meta, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(meta).__name__}")
    if meta.get("ila_format") != FORMAT:
        other = f" (it looks like a {meta['model_type']!r} model of another library)" if "model_type" in meta else ""
        raise UserError(f"{where} is not an ila model config: no \"ila_format\": \"{FORMAT}\"{other}")
    for key, tp in (("model", dict), ("preprocessing", dict), ("class_names", list)):
        if not isinstance(meta.get(key), tp):
            raise UserError(f"{where}: \"{key}\" must be a JSON {'object' if tp is dict else 'array'}")
    _require(where, "preset", meta.get("preset"), str | None)
    _require(where, "class_names", meta["class_names"], list[str])
    hints = typing.get_type_hints(ModelConfig)
    unknown = sorted(set(meta["model"]) - set(hints))
    if unknown:
        raise UserError(f"{where}: unknown model key {unknown[0]!r} (written by a newer ila?)")
    for key, value in meta["model"].items():
        _require(where, f"model.{key}", value, hints[key])
    pre = meta["preprocessing"]
    data_hints, eval_hints = typing.get_type_hints(DataConfig), typing.get_type_hints(EvalConfig)
    fields = {"num_frames": int, "input_size": int, "sampling": data_hints["sampling"], "frame_interval": int,
              "test_clips": int, "test_crops": eval_hints["crops"], "mean": list[float], "std": list[float]}
    for key, tp in fields.items():
        if key not in pre:
            raise UserError(f"{where}: preprocessing.{key} is missing")
        _require(where, f"preprocessing.{key}", pre[key], tp)
    for key, ours in (("mean", MEAN), ("std", STD)):
        if len(pre[key]) != 3 or any(abs(a - b) > 1e-3 for a, b in zip(pre[key], ours)):
            raise UserError(f"{where}: preprocessing.{key}={pre[key]} differs from ila's {list(ours)} "
                            f"(0-255 RGB); this version of ila cannot feed the model such clips")
    raw = {"model": {"preset": meta.get("preset"), **meta["model"]},
           "data": {"num_frames": pre["num_frames"], "input_size": pre["input_size"], "sampling": pre["sampling"],
                    "frame_interval": pre["frame_interval"]},
           "eval": {"clips": pre["test_clips"], "crops": pre["test_crops"]}, "name": name}
    from ila.config import require_complete

    require_complete({"model": meta["model"]}, str(where))   # never fill a saved model's gaps with defaults
    _plausible(meta["model"], tensors, where)
    try:
        cfg = config_from_dict(raw)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    except Exception as e:  # noqa: BLE001 - e.g. a zero patch size: still the file's fault, one line
        raise UserError(f"{where}: the model config is not valid ({type(e).__name__}: {_first_line(e)})") from None
    state = {"format": CHECKPOINT_FORMAT, "config": cfg.to_dict(), "class_names": list(meta["class_names"]),
             "model": tensors, "train_state": None, "source": meta.get("source") or "",
             "preprocessing": pre}
    if isinstance(meta.get("evaluation"), dict):
        state["evaluation"] = meta["evaluation"]
    return state


def _plausible(model: dict, tensors: dict[str, torch.Tensor], where) -> None:
    """Sizes a model built from these weights could have: no config may ask for more layers than there are
    tensors, or a width beyond the largest tensor dimension (a hostile config.json would otherwise build a
    huge model before the weights are compared with it)."""
    most = max((d for t in tensors.values() for d in t.shape), default=0)
    for key in ("vision_layers", "transformer_layers", "mit_layers", "prompts_layers"):
        if isinstance(model.get(key), int) and model[key] > len(tensors):
            raise UserError(f"{where}: model.{key}={model[key]} does not fit the weights ({len(tensors)} tensors)")
    text = ("transformer_width", "vocab_size", "context_length") if model.get("head") == "text" else ("num_classes",)
    align = ("align_hidden", "point_hidden") if model.get("temporal") == "ila" else ()
    for key in ("vision_width", "embed_dim", "num_frames", "image_resolution") + align + text:
        if isinstance(model.get(key), int) and model[key] > max(most, 1) * (16 if key == "image_resolution" else 1):
            raise UserError(f"{where}: model.{key}={model[key]} does not fit the weights (largest tensor "
                            f"dimension {most})")


def load_pretrained(name_or_dir: str | Path, revision: str | None = None, device: str | torch.device = "cpu",
                    cache_dir: str | Path | None = None):
    """(model, config, class_names, raw dict) of a shared folder, `.safetensors` file or Hub repo id."""
    from ila.engine.checkpoint import load_weights
    from ila.config import config_from_dict
    from ila.models import build_model

    state = read_pretrained(name_or_dir, revision, cache_dir)
    if state is None and not os.path.exists(str(name_or_dir)):
        raise UserError(f"{name_or_dir}: no such file or folder (nor a Hugging Face Hub repo id ORG/NAME)")
    if state is None:
        raise UserError(f"{name_or_dir} is not a shared ila model (a folder with {CONFIG_FILE} and {WEIGHTS_FILE}, "
                        f"a .safetensors file or a Hub repo id); load ila .pt checkpoints with ila.load_checkpoint")
    config = config_from_dict(state["config"])
    model = build_model(config.model)
    load_weights(model, state["model"], name_or_dir)
    return model.to(device), config, state["class_names"], state


def from_pretrained(name_or_dir: str | Path, revision: str | None = None, device: str | torch.device = "cpu",
                    cache_dir: str | Path | None = None) -> nn.Module:
    """The model of a shared folder, a `.safetensors` file, or a Hugging Face Hub repo id `ORG/NAME` (downloaded
    into the Hub cache; `revision`: a branch, tag or commit; `HF_HUB_OFFLINE=1`: from the cache only), in eval
    mode. It carries `class_names`, `config` (the full `ila.config.Config`) and `preprocessing` (frames, size,
    mean/std, sampling) as attributes; `model.save_pretrained(DIR)` writes it back out."""
    model, config, names, state = load_pretrained(name_or_dir, revision, device, cache_dir)
    model.class_names, model.config, model.preprocessing = names, config, state["preprocessing"]
    model.source = state.get("source", "")
    return model.eval()
