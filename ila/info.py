"""`ila info`: parameters and FLOPs of a model configuration.

FLOPs convention: `torch.utils.flop_counter.FlopCounterMode`, which counts 2 FLOPs per multiply-add, for one
view (one clip of T frames at the input size) in eval mode, text features cached (the text tower is not run),
the prompt generator run against `text_classes` class names. The paper's tables appear to count
multiply-adds (GMACs = GFLOPs / 2) and leave out part of what the release computes (see the README).
"""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from ila.errors import UserError
from ila.models.config import ModelConfig
from ila.models.ila import ILAModel
from ila.presets import PRESETS, get_preset, preset_name


def count_flops(cfg: ModelConfig, text_classes: int | None = None, batch: int = 1) -> int:
    """FLOPs (2 per multiply-add) of one inference pass of the fused model (`ila.fuse`) on `batch` views, counted
    on the meta device."""
    with torch.device("meta"):
        model = ILAModel(cfg).fuse()
        video = torch.empty(batch, cfg.num_frames, 3, cfg.image_resolution, cfg.image_resolution)
        text = torch.empty(text_classes or cfg.num_classes, cfg.embed_dim) if cfg.head == "text" else None
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(video, text_features=text)
    return counter.get_total_flops()


def count_parameters(cfg: ModelConfig) -> tuple[int, int]:
    """(total, trainable) parameters under the config's freezing."""
    with torch.device("meta"):
        model = ILAModel(cfg)
    total = sum(p.numel() for p in model.parameters())
    return total, sum(p.numel() for p in model.parameters() if p.requires_grad)


def describe(cfg: ModelConfig, text_classes: int | None = None) -> dict:
    total, trainable = count_parameters(cfg)
    flops = count_flops(cfg, text_classes)
    return {"params_m": total / 1e6, "trainable_m": trainable / 1e6, "gflops": flops / 1e9, "gmacs": flops / 2e9}


def print_info(name: str, temporal: str | None = None, frames: int | None = None,
               text_classes: int | None = None) -> None:
    if name == "list":
        for preset in PRESETS:
            print(preset)
        return
    cfg = get_preset(name)
    name = preset_name(name)
    if temporal:
        cfg.temporal = temporal
    if frames is not None:                       # 0 is a value to refuse, not "no flag"
        if frames < 1:
            raise UserError(f"--frames {frames} is not allowed; give a frame count >= 1")
        cfg.num_frames = frames
    if text_classes is not None and text_classes < 1:
        raise UserError(f"--classes {text_classes} is not allowed; give a class count >= 1")
    if text_classes is not None and cfg.head != "text":
        raise UserError(f"--classes counts the class names a text head's prompts run against; {name} has a "
                        f"classifier head with {cfg.num_classes} outputs")
    try:
        cfg.validate()
    except UserError as e:                       # name the flag the user typed, not the config key
        raise UserError(str(e).replace("model.num_frames=", "--frames ")) from None
    d = describe(cfg, text_classes)
    preset = PRESETS[name]
    print(f"{name}: {cfg.temporal}, {cfg.num_frames} frames x {cfg.image_resolution}px, patch {cfg.vision_patch_size}"
          f" ({cfg.grid}x{cfg.grid}), width {cfg.vision_width} x {cfg.vision_layers} blocks, head {cfg.head}"
          f" ({cfg.num_classes} classes)")
    print(f"parameters: {d['params_m']:.2f} M total, {d['trainable_m']:.2f} M trainable")
    print(f"compute per view: {d['gflops']:.2f} GFLOPs ({d['gmacs']:.2f} GMACs; torch.utils.flop_counter, "
          f"2 FLOPs per multiply-add, eval mode, text features cached"
          + (f", prompts for {text_classes or cfg.num_classes} class names)" if cfg.head == "text" else ")"))
    # the paper's accuracy belongs to the preset's own model: another frame count or temporal variant has none
    unchanged = all(getattr(cfg, key) == getattr(preset.model, key) for key in ("temporal", "num_frames"))
    if preset.paper_top1 is not None and unchanged:
        flops = f", {preset.paper_gflops} GFLOPs/view" if preset.paper_gflops else ""
        print(f"paper: {preset.paper_top1} % top-1 on {preset.dataset}{flops}")
