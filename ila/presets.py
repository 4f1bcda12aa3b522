"""Every model of the paper's tables, and small models for CPU experiments, as named configurations."""
from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field

from ila.errors import UserError
from ila.models.config import ModelConfig

_B32 = dict(vision_width=768, vision_layers=12, vision_patch_size=32, image_resolution=224, embed_dim=512,
            transformer_width=512, transformer_layers=12)
_B16 = dict(_B32, vision_patch_size=16)
_L14 = dict(vision_width=1024, vision_layers=24, vision_patch_size=14, image_resolution=224, embed_dim=768,
            transformer_width=768, transformer_layers=12)
_L14_336 = dict(_L14, image_resolution=336)
_K400 = dict(head="text", interactive_block="separable", num_classes=400)
_SSV2 = dict(head="classifier", interactive_block="dense", num_classes=174)


@dataclass(frozen=True)
class Preset:
    """A named model: its config, the CLIP weights it starts from, and what the paper reports for it."""

    model: ModelConfig
    clip: str                       # open_clip name of the CLIP weights it starts from
    dataset: str                    # what it is trained on
    paper_top1: float | None = None  # top-1 (%) in the paper / authors' README, 4x3 views
    paper_gflops: float | None = None  # GFLOPs per view as the paper reports them
    recipe: dict = field(default_factory=dict)  # train.* defaults of this preset (empty: the release's recipe)
    data_recipe: dict = field(default_factory=dict)  # data.* defaults of this preset (empty: the release's)


def _paper(name_geom, frames, head, clip, dataset, top1, gflops):
    return Preset(ModelConfig(**name_geom, **head, num_frames=frames), clip, dataset, top1, gflops)


# From scratch: the recipe measured to learn on the generated motion set (README, "The demo": 85 % top-1 with
# `demo`, whose clips are random crops only: the demo preset's data.recipe=crop); the release's recipe (lr 8e-6 for a pretrained CLIP, mixup/cutmix) leaves a fresh model at chance.
SCRATCH_RECIPE = dict(init="none", epochs=10, batch_size=16, lr=5e-4, weight_decay=0.05, optimizer_groups="uniform",
                      warmup_epochs=1.0, mixup=0.0, cutmix=0.0, label_smoothing=0.1)
# The demo's recipe (README, "The demo"): 20 epochs and no alignment loss. Measured on the textured set with
# distractors: the release's alignment loss (weight 1) held ILA at 27 % (10 epochs); without it 39 %, 49 % at 15
# epochs, 55-56 % at 20 (which 6 frames per clip, the `demo` preset's, keep under 5 minutes on 2 CPU cores).
DEMO_RECIPE = dict(SCRATCH_RECIPE, epochs=20, align_loss_weight=0.0)

PRESETS: dict[str, Preset] = {
    "ila-b32-8f-k400": _paper(_B32, 8, _K400, "ViT-B-32:openai", "kinetics400", 81.3, 40),
    "ila-b32-16f-k400": _paper(_B32, 16, _K400, "ViT-B-32:openai", "kinetics400", 82.4, None),
    "ila-b16-8f-k400": _paper(_B16, 8, _K400, "ViT-B-16:openai", "kinetics400", 84.0, None),
    "ila-b16-16f-k400": _paper(_B16, 16, _K400, "ViT-B-16:openai", "kinetics400", 85.7, 295),
    "ila-l14-8f-k400": _paper(_L14, 8, _K400, "ViT-L-14:openai", "kinetics400", 88.0, 673),
    "ila-l14-336-16f-k400": _paper(_L14_336, 16, _K400, "ViT-L-14-336:openai", "kinetics400", 88.7, 3130),
    "ila-b16-8f-ssv2": _paper(_B16, 8, _SSV2, "ViT-B-16:openai", "ssv2", 65.0, None),
    "ila-b16-16f-ssv2": _paper(_B16, 16, _SSV2, "ViT-B-16:openai", "ssv2", 66.8, 438),
    "ila-b16-32f-ssv2": _paper(_B16, 32, _SSV2, "ViT-B-16:openai", "ssv2", None, None),
    "ila-l14-8f-ssv2": _paper(_L14, 8, _SSV2, "ViT-L-14:openai", "ssv2", 67.8, 907),
    "ila-l14-336-16f-ssv2": _paper(_L14_336, 16, _SSV2, "ViT-L-14-336:openai", "ssv2", 70.2, 3723),
    # From scratch on a CPU: a narrow ViT on 32 px frames (4x4 grid), 6 frames per clip, everything trainable, an
    # order-blind head (no temporal position embedding) so that `mean` and `attention` baselines compare fairly.
    "demo": Preset(ModelConfig(image_resolution=32, vision_patch_size=8, vision_width=64, vision_layers=4,
                               embed_dim=64, num_frames=6, head="classifier", num_classes=8,
                               interactive_block="separable", align_hidden=64, point_hidden=32,
                               mit_pos_embed=False, classifier_dropout=0.0, freeze_clip=False),
                   "", "generated motion set", recipe=DEMO_RECIPE, data_recipe={"recipe": "crop"}),
    # The smallest working model, for tests.
    "tiny": Preset(ModelConfig(image_resolution=32, vision_patch_size=8, vision_width=64, vision_layers=2,
                               embed_dim=64, transformer_width=64, transformer_layers=1, num_frames=4,
                               head="classifier", num_classes=8, align_hidden=32, point_hidden=16,
                               mit_pos_embed=False, classifier_dropout=0.0, freeze_clip=False),
                   "", "tests", recipe=SCRATCH_RECIPE),
}


def did_you_mean(word: str, choices) -> str:
    """ "; did you mean 'x'?" for the closest of `choices`, or "" when none is close."""
    close = difflib.get_close_matches(str(word).lower(), [str(c).lower() for c in choices], n=1, cutoff=0.6)
    if not close:
        return ""
    original = next(c for c in choices if str(c).lower() == close[0])
    return f"; did you mean '{original}'?"


def preset_name(name: str) -> str | None:
    """The preset's exact name for `name` in any letter case, or None."""
    lookup = {k.lower(): k for k in PRESETS}
    return lookup.get(str(name).strip().lower())


def get_preset(name: str) -> ModelConfig:
    """A fresh copy of a preset's model config (the name in any letter case)."""
    exact = preset_name(name)
    if exact is None:
        raise UserError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}{did_you_mean(name, list(PRESETS))}")
    return copy.deepcopy(PRESETS[exact].model)
