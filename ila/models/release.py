"""The authors' released checkpoints as the model knows them: key mapping both ways, variant detection, and the
model config their weights imply. (`ila.weights.release` reads the files.)
"""
from __future__ import annotations

import re

import torch

from ila.errors import UserError
from ila.models.clip import TEXT_KEYS, clip_geometry, clip_to_ila_keys
from ila.models.config import ModelConfig


# ------------------------------------------------------------------ key mapping release -> ila

_SEPARABLE = [(r"interactive_block\.0\.depthwise_conv\.0\.", "interactive_block.0."),
              (r"interactive_block\.0\.depthwise_conv\.1\.", "interactive_block.1."),
              (r"interactive_block\.0\.pointwise_conv\.0\.", "interactive_block.3."),
              (r"interactive_block\.0\.pointwise_conv\.1\.", "interactive_block.4."),
              (r"interactive_block\.1\.", "interactive_block.6."),
              (r"interactive_block\.2\.", "interactive_block.7.")]
_COMMON = [(r"message_attn\.prediction_block\.([0-9])\.", r"alignment.point_head.spatial.\1."),
           (r"message_attn\.prediction_block\.10\.", "alignment.point_head.temporal.0."),
           (r"message_attn\.prediction_block\.12\.", "alignment.point_head.temporal.2."),
           (r"message_attn\.conv\.", "alignment.token_conv."),
           (r"message_attn\.fc\.", "alignment.token_proj."),
           (r"message_attn\.", "alignment."),
           (r"^mit\.classify_head\.", "head.classifier."),
           (r"^mit\.", "head.mit."),
           (r"^prompts_visual_ln\.", "head.prompts.visual_ln."),
           (r"^prompts_visual_proj$", "head.prompts.visual_proj"),
           (r"^prompts_generator\.", "head.prompts.")]


def release_to_ila(state_dict: dict[str, torch.Tensor], trunk: str) -> dict[str, torch.Tensor]:
    """Rename a release state dict's keys to this package's module names (first matching rule of each stage)."""
    stages = ([_SEPARABLE] if trunk == "separable" else []) + [_COMMON]
    out = clip_to_ila_keys({k: v for k, v in state_dict.items() if k.startswith(TEXT_KEYS) or k == "logit_scale"})
    for key, value in state_dict.items():
        if key in ("logit_scale",) or key.startswith(TEXT_KEYS):
            continue
        for rules in stages:
            key = _rename(key, rules)
        out[key] = value
    return out


def _rename(key: str, rules: list[tuple[str, str]]) -> str:
    """Apply the first rule whose pattern matches `key`."""
    for pattern, repl in rules:
        key, n = re.subn(pattern, repl, key)
        if n:
            break
    return key


_INVERSE_SEPARABLE = {"0": "0.depthwise_conv.0", "1": "0.depthwise_conv.1", "3": "0.pointwise_conv.0",
                      "4": "0.pointwise_conv.1", "6": "1", "7": "2"}
_INVERSE = [(r"^text\.", ""), (r"^head\.classifier\.", "mit.classify_head."), (r"^head\.mit\.", "mit."),
            (r"^head\.prompts\.visual_ln\.", "prompts_visual_ln."),
            (r"^head\.prompts\.visual_proj$", "prompts_visual_proj"), (r"^head\.prompts\.", "prompts_generator."),
            (r"alignment\.point_head\.spatial\.", "message_attn.prediction_block."),
            (r"alignment\.point_head\.temporal\.0\.", "message_attn.prediction_block.10."),
            (r"alignment\.point_head\.temporal\.2\.", "message_attn.prediction_block.12."),
            (r"alignment\.token_conv\.", "message_attn.conv."), (r"alignment\.token_proj\.", "message_attn.fc."),
            (r"alignment\.", "message_attn.")]


def ila_to_release(state_dict: dict[str, torch.Tensor], trunk: str) -> dict[str, torch.Tensor]:
    """This package's key names -> the release's (to export weights for the authors' code)."""
    out = {}
    for key, value in state_dict.items():
        if trunk == "separable":
            key = re.sub(r"alignment\.interactive_block\.([0-9])\.",
                         lambda m: f"alignment.interactive_block.{_INVERSE_SEPARABLE[m.group(1)]}.", key)
        out[_rename(key, _INVERSE)] = value
    return out


def detect_variant(state_dict: dict[str, torch.Tensor]) -> str:
    """`k400` (text head, separable trunk) or `ssv2` (classifier head, dense trunk), from the keys."""
    if any(k.startswith("mit.classify_head.") for k in state_dict):
        return "ssv2"
    if "token_embedding.weight" in state_dict or any(k.startswith("prompts_generator.") for k in state_dict):
        return "k400"
    raise UserError("cannot tell the release variant from the weights (no `mit.classify_head` and no text tower); "
                    "pass variant='k400' or 'ssv2'")


def release_config(state_dict: dict[str, torch.Tensor], num_frames: int | None, variant: str) -> ModelConfig:
    """The model config implied by a release state dict (geometry, trunk, head, frames, prompt depth)."""
    geometry = clip_geometry(state_dict)
    sep = any(".depthwise_conv." in k for k in state_dict)
    trunk_key = next((k for k in state_dict if k.endswith("message_attn.prediction_block.0.weight")), None)
    if trunk_key is None:
        raise UserError("the weights have no ILA alignment modules (`message_attn.*`): not an ILA release checkpoint")
    frames = state_dict["mit.positional_embedding"].shape[1]
    if num_frames is not None and num_frames != frames:
        raise UserError(f"the checkpoint's MIT was trained for {frames} frames, not num_frames={num_frames}")
    mit_layers = len({k.split(".")[2] for k in state_dict if k.startswith("mit.resblocks.")})
    cfg = ModelConfig(**geometry, num_frames=frames, temporal="ila",
                      interactive_block="separable" if sep else "dense",
                      align_hidden=state_dict[trunk_key].shape[1], point_hidden=state_dict[trunk_key].shape[0],
                      mit_layers=mit_layers)
    if variant == "ssv2":
        cfg.head, cfg.num_classes = "classifier", state_dict["mit.classify_head.2.weight"].shape[0]
    else:
        cfg.head = "text"
        cfg.prompts_layers = len({k.split(".")[2] for k in state_dict if k.startswith("prompts_generator.decoder.")})
    return cfg
