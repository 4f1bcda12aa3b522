"""`ila convert`: an authors' release checkpoint in, an `ila` checkpoint out (`.pt`), or the shareable forms of
`ila.hub`: a folder (config.json + model.safetensors + README.md) or one `.safetensors` file.

The release file is read without executing pickled code (`ila.models.release.load_release`); the
result carries the full config (geometry and variant read from the weights) and, when given, the
class names, so `ila eval` and `ila predict` need nothing else.
"""
from __future__ import annotations

from pathlib import Path

from ila.config import config_from_dict
from ila.engine.checkpoint import save_checkpoint
from ila.engine.classes import check_class_count, class_names_from
from ila.errors import UserError


def convert_release(release: str | Path, out: str | Path, num_frames: int | None = None,
                    variant: str | None = None, classes: str | None = None) -> Path:
    from ila.models.release import load_release

    if Path(out).suffix not in ("", ".pt", ".pth", ".safetensors") and not Path(out).is_dir():
        raise UserError(f"OUT {out}: end it with .pt (ila checkpoint) or .safetensors, or give a folder")
    model = load_release(release, num_frames=num_frames, variant=variant)
    names = class_names_from(classes) or []
    if names:
        check_class_count(model, names, "--classes")
    cfg = config_from_dict({"model": model.cfg.to_dict(), "name": Path(out).stem})
    if Path(out).suffix in (".pt", ".pth"):
        save_checkpoint(out, model, cfg, names)
    else:                       # a shareable folder, or one .safetensors file (ila.hub)
        from ila.hub import save_pretrained, save_safetensors_file

        source = f"the authors' release checkpoint {Path(release).name}, converted by `ila convert`"
        save = save_safetensors_file if Path(out).suffix == ".safetensors" else save_pretrained
        save(model, out, names, cfg, source=source)
    head = "video-text head" if model.cfg.head == "text" else f"classifier head ({model.cfg.num_classes} outputs)"
    print(f"{release} -> {out}: {model.cfg.vision_layers}-block ViT/{model.cfg.vision_patch_size} at "
          f"{model.cfg.image_resolution} px, {model.cfg.num_frames} frames, {head}, "
          f"{len(names) or 'no'} class names")
    return Path(out)
