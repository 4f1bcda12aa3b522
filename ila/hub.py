"""Shareable models, written: a folder of `config.json` + `model.safetensors` + `README.md` (a model card), the
form the Hugging Face Hub serves, or one `.safetensors` file carrying the same JSON in its metadata.

    ila.save_pretrained(model, "my-ila")               # or: ila export --format hub --checkpoint C --out my-ila
    model = ila.from_pretrained("my-ila")              # a folder, a .safetensors file or "ORG/NAME" on the Hub

`config.json` holds the model config, the class names and the preprocessing record (`ila.data.preprocessing`);
`model.safetensors` the weights. `ila.weights.pretrained` reads them back (JSON and safetensors only: no code
runs).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn

from ila import jsonsafe
from ila.atomic import atomic_folder, atomic_path
from ila.config import config_from_dict
from ila.data.preprocessing import Preprocessing
from ila.engine.checkpoint import unwrap
from ila.engine.classes import check_class_count, class_names_from
from ila.errors import UserError
from ila.models.registry import temporal_variant, temporal_variants
from ila.version import __version__
from ila.weights.factory import load_model
from ila.weights.pretrained import CARD_FILE, CONFIG_FILE, FILES, FORMAT, WEIGHTS_FILE

# ----------------------------------------------------------------------------------------- writing

def pretrained_config(cfg, class_names: list[str] | None, source: str = "", evaluation: dict | None = None) -> dict:
    """The `config.json` of a model: everything needed to rebuild it and feed it clips."""
    out = {"ila_format": FORMAT, "library_name": "ila", "ila_version": __version__, "architecture": "ILAModel",
           "preset": cfg.preset, "model": cfg.model.to_dict(), "class_names": list(class_names or []),
           "preprocessing": Preprocessing.of(cfg).to_dict(), "source": source}
    if evaluation:
        out["evaluation"] = evaluation
    return out


def _run_config(model: nn.Module, config=None):
    """The `Config` to describe `model` with: the given one, the one it was loaded with, or its model config."""
    config = config if config is not None else getattr(model, "config", None)
    if config is None:
        config = config_from_dict({"model": model.cfg.to_dict()})
    if config.model != model.cfg:
        config = config_from_dict({**config.to_dict(), "model": {"preset": config.preset, **model.cfg.to_dict()}})
    return config


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}


def _write_weights(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str], atomic: bool = True) -> None:
    """The safetensors file, serialised here and written by Python: a full disk is an OSError (one line), never
    safetensors' own error type; and its writer, which replaces the path by a new file, never meets a FIFO or a
    device node (`atomic_path` refuses those). `atomic=False`: `path` is in a private staging folder."""
    data = safetensors_bytes(tensors, metadata=metadata)
    if not atomic:
        path.write_bytes(data)
        return
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


# the order in which the files move in where a folder cannot be swapped whole (see `ila.atomic.atomic_folder`)
_FOLDER_FILES = (WEIGHTS_FILE, CONFIG_FILE, CARD_FILE)


def save_pretrained(model: nn.Module, directory: str | Path, class_names: list[str] | None = None, config=None,
                    source: str = "", evaluation: dict | None = None) -> Path:
    """Write `config.json`, `model.safetensors` and a `README.md` model card into `directory`, all three at once:
    they are written into a fresh folder beside it which then trades places with it in one step, so a kill or a
    full disk at any moment leaves the old three files or the new three, never a mix (`ila.atomic.atomic_folder`;
    leftovers of a killed export are cleared by the next one). Other files in the folder (a Hub clone's `.git`,
    `.gitattributes`) are kept. `class_names` default to the model's own (`model.class_names`)."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UserError(f"{directory} is a file; give a folder to save the model in")
    config = _run_config(model, config)
    names = list(class_names if class_names is not None else getattr(model, "class_names", None) or [])
    _check_names(model, names)
    meta = pretrained_config(config, names, source or getattr(model, "source", "") or "", evaluation)
    tensors = _tensors(model)
    with atomic_folder(directory, _FOLDER_FILES, "model folder") as stage:
        _write_weights(stage / WEIGHTS_FILE, tensors, {"format": "pt"}, atomic=False)  # one key: byte-identical
        (stage / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        (stage / CARD_FILE).write_text(model_card(meta, directory.resolve().name), encoding="utf-8")
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
    if names:
        check_class_count(model, names, "class list")


def _blocks(model: dict) -> str:
    """The registered variant's description of the model's video blocks (the bare name if not registered here)."""
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
    """`ila export --format hub`: an ila checkpoint (or run directory, or shared folder) -> a shareable folder (or
    one `.safetensors` file when `out` ends so). The card shows only evaluation results made with these very
    weights (their sha256), with the data named."""
    model, cfg, record = load_model(checkpoint)
    names = class_names_from(classes) or list(record.class_names)
    out = Path(out)
    if out.suffix == ".safetensors":
        save_safetensors_file(model, out, names, cfg, source=record.provenance)
    else:
        save_pretrained(model, out, names, cfg, source=record.provenance, evaluation=evaluation_of(record))
    print(f"{checkpoint} -> {out}: {', '.join(sorted(p.name for p in out.iterdir() if p.name in FILES)) if out.is_dir() else out.name}"
          f" ({cfg.model.head} head, {len(names)} class names)", file=sys.stderr)
    return out


def evaluation_of(record) -> dict | None:
    """The results to show on a model card: the run's `ila eval` results (eval/metrics.json beside the
    checkpoint) when they were made with these weights (same sha256), with the data they came from; else the
    validation recorded in the checkpoint itself (best.pt); else a pretrained folder's own recorded results."""
    if record.kind == "checkpoint" and record.path is not None:
        metrics = record.path.parent / "eval" / "metrics.json"
        found = None
        if metrics.is_file():
            try:                                # bounded JSON; anything unreadable: no evaluation shown
                found = jsonsafe.loads(metrics.read_text(encoding="utf-8"), metrics)
            except (OSError, ValueError, UserError):
                found = None
        weights = found.get("weights") if isinstance(found, dict) else None
        if isinstance(weights, dict) and weights.get("sha256") == record.sha256:
            keep = ("videos", "top1", "top5", "mean_class_acc", "clips", "crops")
            out = {k: found[k] for k in keep if isinstance(found.get(k), (int, float))}
            data = found.get("data") if isinstance(found.get("data"), dict) else {}
            if isinstance(data.get("list"), str):
                out["data"] = f"{Path(data['list']).name} (sha256 {str(data.get('list_sha256', ''))[:12]})"
            return out
    saved = record.metrics                      # best.pt: the validation that made it (one view per video)
    if isinstance(saved, dict) and isinstance(saved.get("top1"), (int, float)):
        return {f"validation {k} during training (1 view)" if k in ("top1", "top5") else k: v
                for k, v in saved.items() if isinstance(v, (int, float))}
    best = (record.train_state or {}).get("best_top1")
    if isinstance(best, (int, float)):
        return {"best validation top1 during training (1 view)": float(best)}
    return record.evaluation
