"""The model's configuration: everything needed to build an ILA model (and nothing about data or training)."""
from __future__ import annotations

import reprlib
from dataclasses import asdict, dataclass, fields
from typing import Literal

from ila.errors import UserError
from ila.models.registry import temporal_variant

Temporal = str  # a registered temporal variant's name (`ila.models.registry.temporal_variants()`)
Head = Literal["text", "classifier"]


# sanity bounds on every number: the lower ones are what the model needs, the upper ones lie far beyond any
# CLIP model (ViT-bigG: width 1664, 48 layers; the paper: 336 px, 32 frames, 400 classes), so a stray digit
# is refused before it builds a model that fills the machine's memory
_RANGES = {"image_resolution": (1, 4096), "vision_patch_size": (1, 4096), "vision_width": (64, 16384),
           "vision_layers": (1, 256), "embed_dim": (64, 16384), "context_length": (2, 4096),
           "vocab_size": (1, 1_000_000), "transformer_width": (64, 16384), "transformer_layers": (0, 256),
           "num_frames": (1, 1024), "align_hidden": (2, 16384), "point_hidden": (4, 16384),
           "align_delta": (0.0, 1.0), "drop_path": (0.0, 0.99), "num_classes": (1, 100_000),
           "mit_layers": (0, 64), "prompts_layers": (0, 64), "prompts_alpha": (-1e6, 1e6),
           "classifier_dropout": (0.0, 0.99)}


_REPR = reprlib.Repr()                      # a bounded repr of a refused value
_REPR.maxstring = _REPR.maxother = 60


def aligned_layers(spec: str, layers: int) -> list[int]:
    """The layer indices that carry the alignment for `model.align_blocks`: `all`; `last:K` (the last K layers);
    `every:K` (every K-th layer counting from 1: layers K-1, 2K-1, ..., so the last one aligns when K divides the
    depth). A ValueError for anything else (`ModelConfig.validate` words it for users)."""
    kind, _, count = spec.partition(":")
    if spec == "all":
        return list(range(layers))
    if kind in ("last", "every") and count.isdigit() and 1 <= int(count) <= layers and str(int(count)) == count:
        k = int(count)
        return list(range(layers - k, layers)) if kind == "last" else list(range(k - 1, layers, k))
    raise ValueError(f"align_blocks must be all, last:K or every:K with K in [1, {layers}], got {spec!r}")


@dataclass
class ModelConfig:
    """Geometry and variants of an ILA model; `ila.presets` holds the paper's models as instances."""

    # CLIP image tower
    image_resolution: int = 224
    vision_patch_size: int = 32
    vision_width: int = 768
    vision_layers: int = 12
    embed_dim: int = 512
    # CLIP text tower (used by the text head only)
    context_length: int = 77
    vocab_size: int = 49408
    transformer_width: int = 512
    transformer_layers: int = 12
    quick_gelu: bool = True                 # OpenAI CLIP: QuickGELU; most open_clip (LAION) weights: GELU
    # video
    num_frames: int = 8
    temporal: Temporal = "ila"              # a registered variant (ila.models.registry): "ila" (IST blocks) | "mean" (no
                                            # temporal modelling) | "attention" (divided ST) | "joint" (joint ST attention:
                                            # a cost reference)
    interactive_block: Literal["separable", "dense"] = "separable"  # release K400 | release SSv2 trunk
    mi_token: Literal["release", "paper"] = "release"  # paper: pooled MI token joins the spatial attention
    align_hidden: int = 256                 # interactive-block channels (release: 256)
    point_hidden: int = 128                 # point-prediction channels (release: 128)
    align_delta: float = 0.2                # initial disturbance offset of the nine training points
    align_pairing: Literal["adjacent", "first", "middle"] = "adjacent"  # each frame aligned with: its predecessor
                                            # (release) | the first frame | the middle frame (paper Sec. 4.3.4)
    align_blocks: str = "all"               # layers with the alignment: all | last:K | every:K (others: CLIP blocks)
    drop_path: float = 0.0
    # head
    head: Head = "text"                     # "text": video-text logits (Kinetics) | "classifier" (SSv2)
    num_classes: int = 400                  # classifier head outputs
    mit_layers: int = 1
    mit_pos_embed: bool = True              # False: order-blind head (fair baselines)
    prompts_layers: int = 2
    prompts_alpha: float = 0.1
    classifier_dropout: float = 0.5
    # what trains
    freeze_clip: bool = True                # release: CLIP image + text towers frozen
    train_prompts: bool = False             # release builds the prompt generator but never optimises it
    grad_checkpointing: bool = False

    @property
    def grid(self) -> int:
        return self.image_resolution // self.vision_patch_size

    def validate(self) -> "ModelConfig":
        variant = temporal_variant(self.temporal)
        choices = {"interactive_block": ("separable", "dense"), "mi_token": ("release", "paper"),
                   "head": ("text", "classifier"), "align_pairing": ("adjacent", "first", "middle")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise UserError(f"model.{key}={getattr(self, key)!r} is not allowed; use one of {', '.join(allowed)}")
        for key, (low, high) in _RANGES.items():
            value = getattr(self, key)
            kind = int if isinstance(low, int) else float
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high or (
                    kind is int and not isinstance(value, int)) or value != value:
                what = "an integer" if kind is int else "a number"
                raise UserError(f"model.{key}={value!r} is not allowed; use {what} in [{low}, {high}]")
        if self.vision_patch_size > self.image_resolution:
            raise UserError(f"model.vision_patch_size={self.vision_patch_size} is larger than "
                            f"model.image_resolution={self.image_resolution}")
        if self.image_resolution % self.vision_patch_size:
            raise UserError(f"model.image_resolution={self.image_resolution} must be a multiple of "
                            f"model.vision_patch_size={self.vision_patch_size}")
        try:
            aligned_layers(self.align_blocks, self.vision_layers)
        except (ValueError, AttributeError):
            raise UserError(f"model.align_blocks={_REPR.repr(self.align_blocks)} is not allowed; use all, last:K or "
                            f"every:K with K in [1, {self.vision_layers}] (model.vision_layers)")
        if variant.check is not None:
            variant.check(self)                 # what the variant's own blocks need (ILA: the alignment's sizes)
        if self.num_frames < variant.min_frames:
            raise UserError(f"model.num_frames={self.num_frames}: temporal modelling needs at least "
                            f"{variant.min_frames} frames")
        if self.vision_width % 64 or self.embed_dim % 64 or (self.head == "text" and self.transformer_width % 64):
            raise UserError("widths must be multiples of 64 (attention heads are width // 64)")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        names = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k != "fast"}  # checkpoints before ila.fuse held `fast` (same outputs)
        unknown = sorted(set(d) - names)
        if unknown:
            raise UserError(f"unknown model config key(s): {', '.join(unknown)}")
        return cls(**d).validate()                  # geometry read from weights is checked like a config
