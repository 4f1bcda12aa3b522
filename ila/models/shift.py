"""`shift`: temporal shift (TSM) before each block's attention, with CLIP's block and no parameters of its own.

Paper Sec. 4.3.1's "CLIP + Temporal Shift" row. In each block a fraction of every token's channels is shifted along
time inside the attention's branch (TSM's residual shift): the first 1/8 of the channels of frame t come from frame
t-1, the next 1/8 from frame t+1, zeros where the clip ends; the rest stay. The skip path keeps the unshifted tokens:

    X2 = X + Attn(LN_1(shift(X)));  X3 = X2 + MLP(LN_2(X2))
"""
from __future__ import annotations

import torch
from torch import nn

from ila.models.clip import ResidualAttentionBlock
from ila.models.registry import register_temporal
from ila.models.temporal_block import TemporalBlock

SHIFT_DIV = 8  # 1/8 of the channels forward in time, 1/8 backward (TSM's default)


def temporal_shift(x: torch.Tensor, frames: int, div: int = SHIFT_DIV) -> torch.Tensor:
    """Tokens `(B*T, L, D)` -> shifted tokens of the same shape: channels `[0, D/div)` of frame t are frame t-1's
    (zeros at t = 0), channels `[D/div, 2D/div)` are frame t+1's (zeros at t = T-1), the rest are frame t's."""
    bt, length, width = x.shape
    fold = width // div
    clips = x.view(bt // frames, frames, length, width)
    out = torch.zeros_like(clips)
    out[:, 1:, :, :fold] = clips[:, :-1, :, :fold]                          # forward in time
    out[:, :-1, :, fold:2 * fold] = clips[:, 1:, :, fold:2 * fold]          # backward in time
    out[:, :, :, 2 * fold:] = clips[:, :, :, 2 * fold:]
    return out.view(bt, length, width)


class ShiftBlock(ResidualAttentionBlock, TemporalBlock):
    """`shift`: CLIP's block with the attention reading temporally shifted tokens. Nothing of its own trains:
    every parameter is CLIP's."""

    def __init__(self, width: int, heads: int, frames: int, quick_gelu: bool = True):
        super().__init__(width, heads, quick_gelu)
        self.frames = frames

    def forward(self, x: torch.Tensor, queries: int | None = None):  # type: ignore[override]
        shifted = temporal_shift(x, self.frames)
        x = self.attn(self.ln_1(shifted), causal=self.causal, residual=x, queries=queries)
        return self.mlp(self.ln_2(x), residual=x), x.new_zeros(()), None


@register_temporal("shift", description=f"temporal-shift CLIP blocks (1/{SHIFT_DIV} of the channels each way)",
                   reference=True)  # an ablation (paper Sec. 4.3.1): out of the demo's default comparison
def shift_blocks(cfg, block_fn=ShiftBlock) -> list[nn.Module]:
    """`shift`: one temporal-shift CLIP block per layer."""
    return [block_fn(cfg.vision_width, cfg.vision_width // 64, cfg.num_frames, cfg.quick_gelu)
            for _ in range(cfg.vision_layers)]
