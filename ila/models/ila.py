"""The ILA video model: CLIP image tower with IST blocks (or a baseline's blocks) -> frame embeddings -> head.

    video (B,T,3,H,W) -> stem -> blocks (each aligns adjacent frames) -> ln_post(class) @ proj -> (B,T,E)
                      -> head: video-text logits (Kinetics) or classifier (SSv2)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ila.errors import UserError
from ila.models.clip import TextTower, VisionTower, clip_geometry, clip_to_ila_keys, read_clip_weights
from ila.models.config import ModelConfig
from ila.models.heads import ClassifierHead, TextHead
from ila.models.ist_block import ISTBlock
from ila.models.registry import create_blocks

DELTA_DECAY_START = 30  # the release halves the disturbance offset at the start of every epoch from 30 on


@dataclass
class ILAOutput:
    """What a forward pass returns."""

    logits: torch.Tensor                 # (B, K) video-text logits or (B, num_classes)
    align_losses: torch.Tensor           # (layers,) auxiliary alignment loss per block (zeros for baselines)
    points: torch.Tensor | None          # (layers, B, T-1, 4) interactive points (x_prev, y_prev, x_cur, y_cur)
    video_features: torch.Tensor         # (B, E) MIT output (text head) / logits (classifier head)


class ILAModel(nn.Module):
    """ILA (or a baseline sharing its backbone and head), configured by a `ModelConfig`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg.validate()
        self.visual = VisionTower(cfg.image_resolution, cfg.vision_patch_size, cfg.vision_width, cfg.embed_dim,
                                  create_blocks(cfg))
        self.visual.transformer.grad_checkpointing = cfg.grad_checkpointing
        if cfg.head == "text":
            self.text = TextTower(cfg.context_length, cfg.vocab_size, cfg.transformer_width, cfg.transformer_layers,
                                  cfg.embed_dim, cfg.quick_gelu)
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
            self.head = TextHead(cfg)
        else:
            self.text = None
            self.head = ClassifierHead(cfg)
        self.align_delta = cfg.align_delta
        self.fused: tuple[str, ...] = ()  # the rewrites `fuse` applied (an inference-only model when non-empty)
        self.set_trainable()

    # ------------------------------------------------------------------ alignment disturbance
    @property
    def align_delta(self) -> float:
        """Offset of the nine disturbed points used in training (the release starts at 0.2)."""
        return self._align_delta

    @align_delta.setter
    def align_delta(self, value: float) -> None:
        self._align_delta = float(value)
        for block in self.visual.transformer.resblocks:
            if isinstance(block, ISTBlock):
                block.alignment.delta = self._align_delta

    def decay_align_delta(self, epoch: int) -> float:
        """The release's rule, called at the start of every epoch: halve the offset from epoch 30 on."""
        if epoch >= DELTA_DECAY_START:
            self.align_delta = self.align_delta * 0.5
        return self.align_delta

    # ------------------------------------------------------------------ inference
    def fuse(self, ablation=()) -> "ILAModel":
        """Rewrite this model, in place, for inference: same outputs, less work (`ila.models.fuse`). `ablation`:
        rewrites to leave out (names from `ila.models.fuse.FUSIONS`), to measure each one. Returns the model,
        which is in eval mode and refuses `train()` from then on."""
        from ila.models.fuse import fuse

        return fuse(self, ablation)

    def train(self, mode: bool = True) -> "ILAModel":
        if mode and getattr(self, "fused", ()):
            raise UserError("this model is fused for inference (ila.fuse): its folded weights cannot be trained; "
                            "load or build an unfused model to train")
        return super().train(mode)

    # ------------------------------------------------------------------ forward
    def forward_features(self, video: torch.Tensor, class_only: bool = False):
        """video `(B,T,3,H,W)` -> frame embeddings `(B,T,E)`, patch tokens `(B,T,N,D)`, losses, points.
        `class_only`: the last block computes the class tokens alone (patch tokens come back with N = 0)."""
        b, t = video.shape[:2]
        if t != self.cfg.num_frames:
            raise ValueError(f"the model was built for {self.cfg.num_frames} frames, got a clip of {t}")
        x = self.visual.embed(video.flatten(0, 1))
        losses, points = [], []
        transformer = self.visual.transformer
        last = len(transformer.resblocks) - 1
        for i, block in enumerate(transformer.resblocks):
            x, loss, pts = transformer.run_block(block, x, **({"queries": 1} if class_only and i == last else {}))
            losses.append(loss)
            points.append(pts)
        frames = self.visual.head(x).view(b, t, -1)
        patches = x[:, 1:].unflatten(0, (b, t))
        pts = torch.stack(points) if points and points[0] is not None else None
        return frames, patches, torch.stack(losses), pts

    def forward_head(self, frames: torch.Tensor, patches: torch.Tensor, text: torch.Tensor | None = None,
                     text_features: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.text is None:
            return self.head(frames)
        if text_features is None:
            if text is None:
                raise ValueError("a text-head model needs class-name tokens (text=) or cached text_features=")
            text_features = self.encode_text(text)
        return self.head(frames, patches, text_features, self.logit_scale)

    def forward(self, video: torch.Tensor, text: torch.Tensor | None = None,
                text_features: torch.Tensor | None = None) -> ILAOutput:
        class_only = self.text is None  # the classifier head reads the class tokens only: the last block computes no
        #                                 patch-token outputs (the patch tokens still serve as its keys and values)
        frames, patches, losses, points = self.forward_features(video, class_only)
        logits, video_features = self.forward_head(frames, patches, text, text_features)
        return ILAOutput(logits, losses, points, video_features)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Class-name token ids `(K, 77)` -> CLIP text features `(K, E)` (cache them while the tower is frozen)."""
        if self.text is None:
            raise ValueError("this model has a classifier head and no text tower")
        return self.text(tokens)

    @torch.no_grad()
    def alignment_maps(self, video: torch.Tensor, block: int = -1) -> dict[str, torch.Tensor]:
        """Interactive points and 2-D alignment masks of one block, for pictures: points `(B,T-1,4)`,
        masks `(B,T-1,2,S,S)` for (previous, current) frame of each pair."""
        blocks = self.visual.transformer.resblocks
        target = blocks[block]
        if not isinstance(target, ISTBlock):
            raise ValueError("alignment maps exist only for temporal='ila'")
        target.record = True
        try:
            self.forward_features(video)
            al = target.last
        finally:
            target.record, target.last = False, None
        masks = al.mask_rows.unsqueeze(-1) * al.mask_cols.unsqueeze(-2)
        return {"points": al.points, "masks": masks}

    def save_pretrained(self, directory, class_names: list[str] | None = None, **kwargs):
        """Write a shareable folder (config.json, model.safetensors, README.md); see `ila.hub.save_pretrained`."""
        from ila.hub import save_pretrained

        return save_pretrained(self, directory, class_names, **kwargs)

    # ------------------------------------------------------------------ what trains
    def set_trainable(self, full_finetune: bool | None = None) -> None:
        """The release's freezing: CLIP towers and logit scale frozen, prompts frozen unless `train_prompts`;
        `full_finetune=True` (or `freeze_clip=False`) trains everything."""
        freeze = self.cfg.freeze_clip if full_finetune is None else not full_finetune
        for name, p in self.named_parameters():
            group = parameter_group(name)
            p.requires_grad = not freeze or group in ("message", "temporal", "head") or (
                group == "prompts" and self.cfg.train_prompts)

    def param_groups(self, base_lr: float = 8e-6, weight_decay: float = 3e-3, scheme: str = "release") -> list[dict]:
        """AdamW parameter groups of the trainable parameters; no weight decay on 1-D tensors, biases and
        positional embeddings. `release`: message_* 5e-4 / 1e-2, temporal_* 10 x base / 1e-3, head 4e-4 / wd,
        prompts 10 x base / wd, CLIP base / wd. `uniform`: every parameter at base lr / wd.
        (`ila.engine.optim.param_groups`, which the training engine's `create_optimizer` uses.)"""
        from ila.engine.optim import param_groups

        return param_groups(self, base_lr, weight_decay, scheme)


def parameter_group(name: str) -> str:
    """Which release group a parameter belongs to: message (alignment), temporal (skip projections / temporal
    attention), head (MIT, classifier), prompts, or clip (pretrained towers)."""
    if ".message_" in name or ".alignment." in name:
        return "message"
    if ".temporal_" in name:
        return "temporal"
    if name.startswith("head.mit.") or name.startswith("head.classifier."):
        return "head"
    if name.startswith("head.prompts."):
        return "prompts"
    return "clip"


def build_model(cfg: ModelConfig) -> ILAModel:
    """An ILA model with fresh weights for a config (use `ila.load_release` / `ila.from_clip` for weights)."""
    return ILAModel(cfg)


def from_clip(weights, cfg: ModelConfig | None = None, **overrides) -> ILAModel:
    """An ILA model whose CLIP towers start from CLIP weights; the new modules keep their release initialisation.

    `weights`: an OpenAI `.pt` (TorchScript or state dict), an open_clip checkpoint, a state dict, or a pretrained
    name such as `ViT-B-32:openai` (fetched through open_clip when online). The geometry is read from the weights;
    `cfg` (e.g. a preset) and `overrides` set the rest (frames, head, classes, ...); an `image_resolution`
    override resamples the spatial position embedding (timm's resampler) to the new patch grid.
    """
    state = read_clip_weights(weights)
    base = (cfg or ModelConfig()).to_dict()
    base.update(clip_geometry(state))
    base.update(overrides)
    cfg = ModelConfig.from_dict(base)
    from ila.safe_load import check_model_fits

    check_model_fits(cfg, state, weights if not isinstance(weights, dict) else "the CLIP weights")
    model = ILAModel(cfg)
    mapped = clip_to_ila_keys(state)
    if model.text is None:
        mapped = {k: v for k, v in mapped.items() if not k.startswith("text.") and k != "logit_scale"}
    from ila.models.resample import fit_position_embeddings   # image_resolution=... overrides the weights' size

    mapped = fit_position_embeddings(mapped, model)
    own = model.state_dict()
    wrong = [k for k, v in mapped.items() if k in own and own[k].shape != v.shape]
    unknown = [k for k in mapped if k not in own]
    if wrong or unknown:
        raise UserError(f"CLIP weights do not fit: {', '.join((wrong + unknown)[:3])}")
    model.load_state_dict(mapped, strict=False)
    return model
