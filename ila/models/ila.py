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
from ila.models.clip import TextTower, VisionTower
from ila.models.config import ModelConfig
from ila.models.heads import ClassifierHead, TextHead
from ila.models.ist_block import ISTBlock
from ila.models.registry import create_blocks
from ila.models.temporal_block import TemporalBlock
from ila.models.fuse import fuse

DELTA_DECAY_START = 30  # the release halves the disturbance offset at the start of every epoch from 30 on


@dataclass
class ILAOutput:
    """What a forward pass returns."""

    logits: torch.Tensor                 # (B, K) video-text logits or (B, num_classes)
    align_losses: torch.Tensor           # (layers,) auxiliary alignment loss per block (zeros for baselines)
    points: torch.Tensor | None          # (A, B, T-1, 4) interactive points (x_prev, y_prev, x_cur, y_cur) of the
    #                                      A blocks that predict them (all layers for ila; None: no such block)
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
    def fuse(self, ablation=(), precision: str = "fp32") -> "ILAModel":
        """Rewrite this model, in place, for inference: same outputs, less work (`ila.models.fuse`). `ablation`:
        rewrites to leave out (names from `ila.models.fuse.FUSIONS`), to measure each one; `precision`: fp32
        (exact) or bf16 (the frame tower cast once; `ila.models.fuse.PRECISIONS`). Returns the model, which is in
        eval mode and refuses `train()` from then on."""
        return fuse(self, ablation, precision)

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
        x = self.visual.embed(video.flatten(0, 1).to(self.visual.conv1.weight.dtype))  # bf16 tower: the clip cast
        losses, points = [], []
        transformer = self.visual.transformer
        last = len(transformer.resblocks) - 1
        for i, block in enumerate(transformer.resblocks):
            x, loss, pts = transformer.run_block(block, x, **({"queries": 1} if class_only and i == last else {}))
            losses.append(loss)
            points.append(pts)
        out = self.visual.proj.dtype      # the head's dtype: a bf16 tower's outputs come back to it (fp32)
        x = x.to(out)                     # (the same tensor when the tower has the head's dtype)
        frames = self.visual.head(x).view(b, t, -1)
        patches = x[:, 1:].unflatten(0, (b, t))
        given = [p for p in points if p is not None]            # the blocks that align (`model.align_blocks`)
        pts = torch.stack(given).to(out) if given else None
        return frames, patches, torch.stack(losses).to(out), pts

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

    @property
    def has_alignment_maps(self) -> bool:
        """Whether every video block gives alignment maps (`alignment_maps` works for any block index): the
        blocks' own `has_alignment_maps` (True for temporal='ila')."""
        blocks = self.visual.transformer.resblocks
        return len(blocks) > 0 and all(getattr(b, "has_alignment_maps", False) for b in blocks)

    @torch.no_grad()
    def alignment_maps(self, video: torch.Tensor, block: int = -1) -> dict[str, torch.Tensor]:
        """Interactive points and 2-D alignment masks of one block, for pictures: points `(B,T-1,4)`,
        masks `(B,T-1,2,S,S)` for (previous, current) frame of each pair. A ValueError for a block without maps
        (`has_alignment_maps`)."""
        target = self.visual.transformer.resblocks[block]
        if not getattr(target, "has_alignment_maps", False):
            raise ValueError(f"alignment maps exist only for blocks that align frames (temporal='ila'); block {block} "
                             f"of this temporal={self.cfg.temporal!r} model is a {type(target).__name__}")
        return target.alignment_maps(lambda: self.forward_features(video))

    # ------------------------------------------------------------------ what trains
    def set_trainable(self, full_finetune: bool | None = None) -> None:
        """The release's freezing: CLIP towers and logit scale frozen, prompts frozen unless `train_prompts`; the
        video blocks' own parameters (`TemporalBlock.trainable`) and the head train. `full_finetune=True` (or
        `freeze_clip=False`) trains everything. (`ila.engine.optim.param_groups` makes the optimizer's groups.)"""
        freeze = self.cfg.freeze_clip if full_finetune is None else not full_finetune
        groups = parameter_group_map(self)
        for name, p in self.named_parameters():
            group = groups[name]
            p.requires_grad = not freeze or group in ("message", "temporal", "head") or (
                group == "prompts" and self.cfg.train_prompts)


# the head's groups, by key prefix: the MIT and the classifier are new (`head`), the prompts CLIP-initialised
HEAD_GROUPS = {"head.mit.": "head", "head.classifier.": "head", "head.prompts.": "prompts"}


def parameter_group_map(model: nn.Module, buffers: bool = False) -> dict[str, str]:
    """The group of every parameter of `model` (`buffers=True`: of every state-dict key), by name: `message` and
    `temporal` for what a video block declares its own (`TemporalBlock.trainable`, matched relative to the block),
    `head` (MIT, classifier) and `prompts` by the head's prefixes, `clip` for everything else (the pretrained
    towers and logit scale). `ILAModel.set_trainable` and `ila.engine.optim.param_groups` read it."""
    blocks = [(prefix + ".", m) for prefix, m in model.named_modules() if prefix and isinstance(m, TemporalBlock)]
    names = model.state_dict().keys() if buffers else (n for n, _ in model.named_parameters())
    groups = {}
    for name in names:
        group = next((g for prefix, g in HEAD_GROUPS.items() if name.startswith(prefix)), None)
        if group is None:
            # the innermost block holding the name decides (blocks do not nest in ila, but a variant's might)
            owner = max(((prefix, b) for prefix, b in blocks if name.startswith(prefix)), key=lambda pb: len(pb[0]),
                        default=None)
            group = owner[1].parameter_group(name[len(owner[0]):]) if owner else "clip"
        groups[name] = group
    return groups


def parameter_group(name: str) -> str:
    """The group of one key of a built-in variant's model from its name alone, for key lists without a model (a
    weights file's): the built-in blocks' declarations (`trainable`) as name substrings. With a model,
    `parameter_group_map(model)` is exact for every variant, a newly registered one's too."""
    if ".message_" in name or ".alignment." in name:
        return "message"
    if ".temporal_" in name:
        return "temporal"
    return next((g for prefix, g in HEAD_GROUPS.items() if name.startswith(prefix)), "clip")


def build_model(cfg: ModelConfig) -> ILAModel:
    """An ILA model with fresh weights for a config (`ila.create_model` builds one with weights)."""
    return ILAModel(cfg)
