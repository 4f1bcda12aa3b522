"""The Implicit Spatio-Temporal (IST) block: a CLIP block that first aligns adjacent frames.

Release form (default), per block with input X `(B*T, L, D)`:
    A  = LN_msg(Linear_msg(X))                                     message features
    X1 = X + Linear_align(aligned tokens of A) + Linear_inter(interactive tokens of A)
    X2 = X1 + Attn(LN_1(X1));  X3 = X2 + MLP(LN_2(X2))             CLIP's frozen block
Paper form (`mi_token="paper"`): additionally the pooled mutual-information token of each frame,
z_mut = Avg(a_t), is appended to the frame's tokens for the spatial attention and dropped after it
(paper Sec. 3.3, eq. "[z~_t, z~_mut] = MSA(LN([z_t, z_mut])) + [z_t, z_mut]").
"""
from __future__ import annotations

from typing import Callable, Collection

import torch
from torch import nn

from ila.errors import UserError
from ila.models.alignment import ImplicitAlignment, alignment_loss, compose_linears
from ila.models.clip import MLP, Attention, Linear, activation
from ila.models.config import aligned_layers
from ila.models.fuse import FUSIONS, FusedLinear, as_fused_linear, fold_block_layer_norms
from ila.models.registry import register_temporal
from ila.models.temporal import FrameBlock
from ila.models.temporal_block import TemporalBlock


class ISTBlock(TemporalBlock):
    """One IST block; `forward` returns the new tokens (and, while `record` is on, keeps the block's alignment in
    `self.last`). Its own parameters: the message projection and the alignment (group `message`), the two skip
    projections (group `temporal`); `ln_1`, `attn`, `ln_2`, `mlp` are CLIP's block. `pairing`: which frame each
    frame is aligned with (`ila.models.alignment.pair_indices`; release: `adjacent`). A subclass swaps the
    alignment module (`alignment_class`) and the auxiliary loss (`pair_loss`)."""

    alignment_class = ImplicitAlignment
    trainable = {"message_*": "message", "alignment": "message", "temporal_*": "temporal"}
    has_alignment_maps = True

    def __init__(self, width: int, heads: int, grid: int, frames: int, trunk: str = "separable",
                 hidden: int = 256, point_hidden: int = 128, mi_token: str = "release", drop_path: float = 0.0,
                 quick_gelu: bool = True, pairing: str = "adjacent"):
        super().__init__()
        self.frames = frames
        self.mi_token = mi_token
        self.message_fc = Linear(width, width)
        self.message_ln = nn.LayerNorm(width)
        self.alignment = self.alignment_class(width, grid, trunk, hidden, point_hidden, pairing)
        self.temporal_skip_align_fc = Linear(width, width)
        self.temporal_skip_fc = Linear(width, width)
        for fc in (self.temporal_skip_align_fc, self.temporal_skip_fc):  # each block starts as the CLIP block
            nn.init.zeros_(fc.weight)
            nn.init.zeros_(fc.bias)
        if drop_path > 0:
            from timm.layers import DropPath  # timm (with torchvision and wandb) costs seconds of import: only here
            self.drop_path = DropPath(drop_path)
        else:
            self.drop_path = nn.Identity()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = MLP(width, activation(quick_gelu))
        self.record = False  # keep the last alignment (for pictures); off so training holds no extra tensors
        self.last = None

    def forward(self, x: torch.Tensor, queries: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tokens `(B*T, L, D)` -> (tokens, alignment loss `()`, points `(B, T-1, 4)`); with `queries`, only the
        first `queries` tokens come out (the others still enter the attention as keys and values)."""
        bt, length, width = x.shape
        a = self.message_ln(self.message_fc(x))
        al = self.alignment(a.view(-1, self.frames, length, width), skip=self.temporal_skip_fc)
        if self.record:
            self.last = al
        inter = al.interactive_tokens.view(bt, length, width)              # already through temporal_skip_fc
        aligned, align_fc = al.aligned_tokens.view(bt, length, width), self.temporal_skip_align_fc
        if isinstance(self.drop_path, nn.Identity) or not self.training:  # X1 = X + Linear_align(.) + interactive
            x = align_fc(aligned, residual=x + inter)
        else:
            x = x + self.drop_path(align_fc(aligned))
            x = x + self.drop_path(inter)
        if self.mi_token == "paper":
            mi = self.alignment.merge(al.pooled_prev, al.pooled_cur) / (length - 1)   # Avg over cells, per frame
            x = torch.cat([x, mi.reshape(bt, 1, width)], dim=1)
            x = self.attn(self.ln_1(x), residual=x, queries=queries)[:, :length]
        else:
            x = self.attn(self.ln_1(x), residual=x, queries=queries)
        x = self.mlp(self.ln_2(x), residual=x)
        return x, self.pair_loss(al), al.points

    def pair_loss(self, al) -> torch.Tensor:
        """The block's auxiliary alignment loss (the release's: mean over pairs of 1 - cos of the MI vectors)."""
        return alignment_loss(al.pooled_prev, al.pooled_cur)

    def fuse(self, rewrites: Collection[str] | None = None) -> None:
        """Rewrite the block in place for inference (`ila.fuse`; `rewrites`: names from FUSIONS, None: all).
        `ln`: `ln_1` / `ln_2`'s affine folded into the attention's q/k/v projection / the MLP's first linear;
        `skip`: `temporal_skip_fc` folded into the alignment's token projection (the interactive class token goes
        through the skip alone) and replaced by the identity. (The alignment's own rewrites:
        `ImplicitAlignment.fuse`; the CLIP modules inside: `ila.models.fuse.fuse`.)"""
        rewrites = FUSIONS if rewrites is None else rewrites
        if "ln" in rewrites:
            fold_block_layer_norms(self)
        if "skip" in rewrites and isinstance(self.temporal_skip_fc, nn.Linear):
            onednn = "onednn" in rewrites
            proj, skip = self.alignment.token_proj, self.temporal_skip_fc
            self.alignment.token_proj = FusedLinear(*compose_linears(proj, skip), onednn=onednn)
            self.alignment.class_proj = as_fused_linear(skip, onednn)
            self.temporal_skip_fc = nn.Identity()

    def alignment_maps(self, run: Callable[[], object]) -> dict[str, torch.Tensor]:
        """The block's interactive points `(B, T-1, 4)` and 2-D alignment masks `(B, T-1, 2, S, S)` (previous,
        current frame of each pair) in the forward pass `run()` performs, and `frames` `(T-1, 2)`: the frame
        indices of each pair's (previous, current) side under the block's pairing (`model.align_pairing`); the
        alignment is kept only during it."""
        self.record = True
        try:
            run()
            al = self.last
        finally:
            self.record, self.last = False, None
        if al is None:
            raise ValueError("the forward pass did not run this block")
        masks = al.mask_rows.unsqueeze(-1) * al.mask_cols.unsqueeze(-2)
        return {"points": al.points, "masks": masks, "frames": self.alignment.pair_frames(self.frames)}


def _check_alignment_sizes(cfg) -> None:
    """What the alignment needs of a config: a 4x4 patch grid at least, channel counts it can halve."""
    if cfg.grid < 4:
        raise UserError(f"ILA needs a patch grid of at least 4x4, got {cfg.grid}x{cfg.grid}; "
                        f"raise model.image_resolution or lower model.vision_patch_size")
    if cfg.align_hidden % 2:
        raise UserError(f"model.align_hidden={cfg.align_hidden} must be even (the interactive tokens take "
                        f"half of its channels)")
    if cfg.point_hidden % 4:
        raise UserError(f"model.point_hidden={cfg.point_hidden} must be a multiple of 4 (two groups of "
                        f"halved channels predict the points)")


def alignment_blocks(cfg, block_fn) -> list[nn.Module]:
    """One `block_fn` (an IST block class) per layer named by `cfg.align_blocks`, `mean`'s plain CLIP block
    (`FrameBlock`: CLIP's block on each frame, every parameter CLIP's) in the others; drop-path rates rise linearly from 0 to `cfg.drop_path` over all layers."""
    rates = [cfg.drop_path * i / max(cfg.vision_layers - 1, 1) for i in range(cfg.vision_layers)]
    aligned = set(aligned_layers(cfg.align_blocks, cfg.vision_layers))
    extra = {} if cfg.align_pairing == "adjacent" else {"pairing": cfg.align_pairing}  # a release block_fn's signature
    return [block_fn(cfg.vision_width, cfg.vision_width // 64, cfg.grid, cfg.num_frames, cfg.interactive_block,
                     cfg.align_hidden, cfg.point_hidden, cfg.mi_token, rate, cfg.quick_gelu, **extra)
            if i in aligned else FrameBlock(cfg.vision_width, cfg.vision_width // 64, cfg.quick_gelu)
            for i, rate in enumerate(rates)]


@register_temporal("ila", description="IST blocks ({interactive_block} interactive block)",
                   check=_check_alignment_sizes)
def ist_blocks(cfg, block_fn=ISTBlock) -> list[nn.Module]:
    """`ila`: one IST block per layer (or per layer of `cfg.align_blocks`, plain CLIP blocks elsewhere), each
    pairing frames by `cfg.align_pairing`."""
    return alignment_blocks(cfg, block_fn)
