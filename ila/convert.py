"""`ila convert`: an authors' release checkpoint in, an `ila` checkpoint out (`.pt`), or the shareable forms of
`ila.hub`: a folder (config.json + model.safetensors + README.md) or one `.safetensors` file.

The release file is read without executing pickled code (`ila.weights.release`); the result carries the full
config (geometry and variant read from the weights) and, when given, the class names, so `ila eval` and
`ila predict` need nothing else. A classifier's names must name exactly its outputs: the authors' SSv2 release
has 400 outputs for 174 classes, and `trim_classifier=True` keeps only the first len(names) outputs (the ones
the release trains), saying so.
"""
from __future__ import annotations

import sys
from pathlib import Path

from ila.config import config_from_dict
from ila.engine.checkpoint import save_checkpoint
from ila.engine.classes import check_class_count, class_names_from
from ila.errors import UserError
from ila.hub import save_pretrained, save_safetensors_file
from ila.models.config import ModelConfig
from ila.weights.factory import load_model
from ila.weights.sources import read_weights


def _trimmed(record, keep: int):
    """The record with a classifier head cut to its first `keep` outputs."""
    model = dict(record.model)
    outputs = model["num_classes"]
    if model.get("head") != "classifier":
        raise UserError("--trim-classifier applies to a classifier head (SSv2); this model has a video-text head, "
                        "which takes any class names")
    if not 1 <= keep <= outputs:
        raise UserError(f"--trim-classifier keeps the first len(--classes) outputs: give between 1 and {outputs} "
                        f"names, not {keep}")
    last = max(k for k in record.state_dict if k.startswith("head.classifier.") and k.endswith(".weight"))
    prefix = last[: -len("weight")]
    record.state_dict = {**record.state_dict, prefix + "weight": record.state_dict[prefix + "weight"][:keep].clone(),
                         prefix + "bias": record.state_dict[prefix + "bias"][:keep].clone()}
    model["num_classes"] = keep
    record.model = ModelConfig.from_dict(model).to_dict()
    print(f"keeping the first {keep} of the classifier's {outputs} outputs (--trim-classifier)", file=sys.stderr)
    return record


def convert_release(release: str | Path, out: str | Path, num_frames: int | None = None,
                    variant: str | None = None, classes: str | None = None, trim_classifier: bool = False) -> Path:
    if Path(out).suffix not in ("", ".pt", ".pth", ".safetensors") and not Path(out).is_dir():
        raise UserError(f"OUT {out}: end it with .pt (ila checkpoint) or .safetensors, or give a folder")
    names = class_names_from(classes) or []
    record = read_weights(release, kind="release", num_frames=num_frames, variant=variant)
    if trim_classifier:
        if not names:
            raise UserError("--trim-classifier keeps as many outputs as --classes names: give --classes")
        record = _trimmed(record, len(names))
    model = load_model(record)[0]
    if names:
        check_class_count(model, names, "--classes", release)
    cfg = config_from_dict({"model": model.cfg.to_dict(), "name": Path(out).stem})
    if Path(out).suffix in (".pt", ".pth"):
        save_checkpoint(out, model, cfg, names)
    else:                       # a shareable folder, or one .safetensors file (ila.hub)

        source = f"the authors' release checkpoint {Path(release).name}, converted by `ila convert`"
        save = save_safetensors_file if Path(out).suffix == ".safetensors" else save_pretrained
        save(model, out, names, cfg, source=source)
    head = "video-text head" if model.cfg.head == "text" else f"classifier head ({model.cfg.num_classes} outputs)"
    print(f"{release} -> {out}: {model.cfg.vision_layers}-block ViT/{model.cfg.vision_patch_size} at "
          f"{model.cfg.image_resolution} px, {model.cfg.num_frames} frames, {head}, "
          f"{len(names) or 'no'} class names")
    return Path(out)
