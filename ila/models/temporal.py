"""The baselines that share ILA's backbone and head: no temporal modelling, divided and joint space-time attention.

Every video block is a `TemporalBlock` (`ila.models.temporal_block`) and maps tokens `(B*T, L, D)` -> (tokens,
alignment loss, points) so the backbone treats all variants alike; the baselines return a zero loss and no points.
Each block declares its own new parameters (`trainable`); the rest are CLIP's. Each variant is registered once
(`ila.models.registry`) by the function that builds its blocks.
"""
from __future__ import annotations

import torch
from torch import nn

from ila.models.clip import Attention, ResidualAttentionBlock
from ila.models.registry import register_temporal
from ila.models.temporal_block import TemporalBlock


class FrameBlock(ResidualAttentionBlock, TemporalBlock):
    """`mean`: the plain CLIP block on each frame; frames meet only when the head averages them. Nothing of its own
    trains: every parameter is CLIP's."""

    def __init__(self, width: int, heads: int, quick_gelu: bool = True):
        super().__init__(width, heads, quick_gelu)

    def forward(self, x: torch.Tensor, queries: int | None = None):  # type: ignore[override]
        return super().forward(x, queries), x.new_zeros(()), None


class DividedSTBlock(ResidualAttentionBlock, TemporalBlock):
    """`attention`: temporal self-attention over each patch's T tokens, then CLIP's spatial block
    (divided space-time attention as in TimeSformer). The temporal output projection starts at zero.
    A learned per-frame position embedding enters the temporal attention's input (as TimeSformer's time
    embedding): without it the attention is permutation-equivariant over frames and, with an order-blind
    head, the whole model could not tell a video from its reversal. The temporal_* modules are its own (group
    `temporal`); the rest is CLIP's block."""

    trainable = {"temporal_*": "temporal"}

    def __init__(self, width: int, heads: int, frames: int, quick_gelu: bool = True):
        super().__init__(width, heads, quick_gelu)
        self.frames = frames
        self.temporal_ln = nn.LayerNorm(width)
        self.temporal_positional_embedding = nn.Parameter(0.02 * torch.randn(frames, width))
        self.temporal_attn = Attention(width, heads)
        self.temporal_fc = nn.Linear(width, width)
        nn.init.zeros_(self.temporal_fc.weight)
        nn.init.zeros_(self.temporal_fc.bias)

    def forward(self, x: torch.Tensor, queries: int | None = None):  # type: ignore[override]
        bt, length, width = x.shape
        b, t = bt // self.frames, self.frames
        patches = x[:, 1:].reshape(b, t, length - 1, width).transpose(1, 2).reshape(-1, t, width)
        mixed = self.temporal_fc(self.temporal_attn(self.temporal_ln(patches) + self.temporal_positional_embedding))
        mixed = mixed.view(b, length - 1, t, width).transpose(1, 2).reshape(bt, length - 1, width)
        x = x + nn.functional.pad(mixed, (0, 0, 1, 0))  # class tokens untouched
        return super().forward(x, queries), x.new_zeros(()), None


class JointSTBlock(ResidualAttentionBlock, TemporalBlock):
    """`joint`: one self-attention over all T x L tokens of a clip (joint space-time attention, as in ViViT's
    unfactorised model). A reference for how attention cost grows with T; not one of ILA's baselines. Every
    parameter is CLIP's (its attention simply sees more tokens)."""

    def __init__(self, width: int, heads: int, frames: int, quick_gelu: bool = True):
        super().__init__(width, heads, quick_gelu)
        self.frames = frames

    def forward(self, x: torch.Tensor, queries: int | None = None):  # type: ignore[override]
        """(`queries`: the class tokens are not a prefix of the joint sequence, so all tokens are computed.)"""
        bt, length, width = x.shape
        x = super().forward(x.reshape(bt // self.frames, self.frames * length, width))
        return x.reshape(bt, length, width)[:, :queries], x.new_zeros(()), None


@register_temporal("mean", description="plain CLIP blocks, frames averaged", min_frames=1)
def frame_blocks(cfg, block_fn=FrameBlock) -> list[nn.Module]:
    """`mean`: one plain CLIP block per layer."""
    return [block_fn(cfg.vision_width, cfg.vision_width // 64, cfg.quick_gelu) for _ in range(cfg.vision_layers)]


@register_temporal("attention", description="divided space-time attention blocks")
def divided_st_blocks(cfg, block_fn=DividedSTBlock) -> list[nn.Module]:
    """`attention`: one divided space-time attention block per layer."""
    return [block_fn(cfg.vision_width, cfg.vision_width // 64, cfg.num_frames, cfg.quick_gelu)
            for _ in range(cfg.vision_layers)]


@register_temporal("joint", description="joint space-time attention blocks", reference=True)
def joint_st_blocks(cfg, block_fn=JointSTBlock) -> list[nn.Module]:
    """`joint`: one joint space-time attention block per layer (a cost reference)."""
    return [block_fn(cfg.vision_width, cfg.vision_width // 64, cfg.num_frames, cfg.quick_gelu)
            for _ in range(cfg.vision_layers)]
