"""Implicit mask-based alignment: interactive points of a frame pair and the soft masks around them.

Shapes: B videos, P = T-1 frame pairs, an S x S patch grid, D channels. A pair is
(previous frame, current frame) = (frame t, frame t+1) under the release's `adjacent` pairing; `first` / `middle`
pair every other frame with the first / middle frame (paper Sec. 4.3.4: (reference frame, frame t)). Points are
(x_prev, y_prev, x_cur, y_cur) in grid coordinates where cell k sits at 2k/(S-1) - 1 (x indexes columns, y rows).
"""
from __future__ import annotations

from typing import Collection, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ila.models.clip import Linear
from ila.models.fuse import FUSIONS, GroupedPointwise, fold_conv_bn_relu

# Mask shape of the release (the paper's eta, delta, beta): height 1, plateau radius 0.25, slope 1.5.
MASK_HEIGHT, MASK_RADIUS, MASK_SLOPE = 1.0, 0.25, 1.5
POINT_RANGE = 0.75  # the release scales the tanh output to [-0.75, 0.75]


def interactive_block(dim: int, hidden: int, kind: str) -> nn.Sequential:
    """The shared trunk on a pair's stacked features [P_t ; C_t] (2D channels) -> `hidden` channels.

    `separable` (Kinetics release): depthwise 3x3 + BN + ReLU, pointwise 1x1 + BN + ReLU, 3x3 + BN + ReLU.
    `dense` (SSv2 release): 3x3 + BN + ReLU, 3x3 + BN + ReLU.
    """
    if kind == "separable":
        layers = [nn.Conv2d(2 * dim, 2 * dim, 3, padding=1, groups=2 * dim), nn.BatchNorm2d(2 * dim), nn.ReLU(True),
                  nn.Conv2d(2 * dim, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU(True)]
    elif kind == "dense":
        layers = [nn.Conv2d(2 * dim, hidden, 3, padding=1), nn.BatchNorm2d(hidden), nn.ReLU(True)]
    else:
        raise ValueError(f"interactive_block must be 'separable' or 'dense', got {kind!r}")
    layers += [nn.Conv2d(hidden, hidden, 3, padding=1), nn.BatchNorm2d(hidden), nn.ReLU(True)]
    return nn.Sequential(*layers)


class InteractivePointHead(nn.Module):
    """p_{t-1}, p_t = Conv(Concat(z_{t-1}, z_t)) (paper Sec. 3, point prediction), in the release's layout.

    Spatial: two [3x3 conv, BN, 2x2 max-pool, ReLU] stages and a global max-pool, per pair. Temporal: two 1x1
    convolutions over the pair sequence with 2 groups (one group per point), ReLU between, tanh after.
    The last convolution starts at zero, so every point starts at the grid centre.
    """

    def __init__(self, in_channels: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.spatial = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1), nn.BatchNorm2d(hidden), nn.MaxPool2d(2), nn.ReLU(True),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.BatchNorm2d(hidden), nn.MaxPool2d(2), nn.ReLU(True),
            nn.AdaptiveMaxPool2d(1))
        self.temporal = nn.Sequential(nn.Conv1d(hidden, hidden // 2, 1, groups=2), nn.ReLU(True),
                                      nn.Conv1d(hidden // 2, 4, 1, groups=2), nn.Tanh())
        nn.init.zeros_(self.temporal[2].weight)
        nn.init.zeros_(self.temporal[2].bias)

    def forward(self, pair_features: torch.Tensor, batch: int) -> torch.Tensor:
        """`(B*P, C, S, S)` -> raw points `(B, P, 4)` in [-1, 1] (before the 0.75 scaling)."""
        pooled = self.spatial(pair_features).view(batch, -1, self.hidden)
        return self.temporal(pooled.transpose(1, 2)).transpose(1, 2)


def grid_coordinates(size: int, device=None, dtype=None) -> torch.Tensor:
    """Cell centres 2k/(S-1) - 1 for k = 0..S-1."""
    return torch.arange(size, device=device, dtype=dtype) * (2.0 / (size - 1)) - 1.0


def axis_weights(coords: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """w(d) = eta if |d| <= delta else max(0, eta - beta (|d| - delta)), per axis; `(...,)` -> `(..., S)`."""
    d = (coords - position.unsqueeze(-1)).abs()
    return (MASK_HEIGHT - MASK_SLOPE * (d - MASK_RADIUS).clamp(min=0)).clamp(min=0)


def alignment_masks(points: torch.Tensor, size: int, delta: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Separable masks m = w(y) w(x)^T around each point; with `delta` > 0 the mean of the masks at the point
    and its eight neighbours at offsets of delta (the release's training disturbance).

    points `(..., 4)` -> (row weights `(..., 2, S)`, column weights `(..., 2, S)`) for (previous, current).
    The 2-D mask of a frame is `rows[..., :, None] * cols[..., None, :]`. Because the nine offsets form the full
    grid {-delta, 0, delta}^2, the mean of the nine products is the product of the per-axis means.
    """
    coords = grid_coordinates(size, points.device, points.dtype)
    xy = points.unflatten(-1, (2, 2))  # (..., frame, xy)
    x, y = xy[..., 0], xy[..., 1]
    if delta:
        offsets = torch.tensor([-delta, 0.0, delta], device=points.device, dtype=points.dtype)
        cols = axis_weights(coords, x.unsqueeze(-1) + offsets).mean(-2)
        rows = axis_weights(coords, y.unsqueeze(-1) + offsets).mean(-2)
    else:
        cols, rows = axis_weights(coords, x), axis_weights(coords, y)
    return rows, cols


def merge_pairs(prev: torch.Tensor, cur: torch.Tensor) -> torch.Tensor:
    """Per-frame view of pair quantities along dim 1: frame 0 takes prev_0, frame T-1 takes cur_{T-2},
    a middle frame t takes (prev_t + cur_{t-1}) / 2.   `(B, T-1, ...)` x 2 -> `(B, T, ...)`."""
    pad = [0, 0] * (prev.dim() - 2)
    out = nn.functional.pad(prev, pad + [0, 1]) + nn.functional.pad(cur, pad + [1, 0])
    frames = out.shape[1]
    if frames > 2:
        scale = torch.full((frames,), 0.5, device=out.device, dtype=out.dtype)
        scale[0] = scale[-1] = 1.0
        out = out * scale.view(1, frames, *([1] * (out.dim() - 2)))
    return out


PAIRINGS = ("adjacent", "first", "middle")


def pair_indices(frames: int, pairing: str = "adjacent") -> tuple[list[int], list[int]]:
    """The frame of each pair's previous and current side, `(prev, cur)`, each a list of P = T-1 frame indices:
    `adjacent` (release): (t, t+1); `first`: (0, t) for t = 1..T-1; `middle`: (T//2, t) for every t != T//2."""
    if pairing == "adjacent":
        return list(range(frames - 1)), list(range(1, frames))
    if pairing == "first":
        return [0] * (frames - 1), list(range(1, frames))
    if pairing == "middle":
        mid = frames // 2
        return [mid] * (frames - 1), [t for t in range(frames) if t != mid]
    raise ValueError(f"pairing must be one of {', '.join(PAIRINGS)}, got {pairing!r}")


def merge_indexed(prev: torch.Tensor, cur: torch.Tensor, prev_index: list[int], cur_index: list[int],
                  frames: int) -> torch.Tensor:
    """`merge_pairs` for any pairing: each frame takes the mean of the pair quantities of every pair side it is
    on (a frame on no side takes zeros).   `(B, P, ...)` x 2 -> `(B, T, ...)`."""
    index = torch.tensor(prev_index + cur_index, device=prev.device)
    weights = nn.functional.one_hot(index, frames).to(prev.dtype).T                   # (T, 2P)
    weights = weights / weights.sum(1, keepdim=True).clamp(min=1)
    both = torch.cat([prev, cur], dim=1)                                                # (B, 2P, ...)
    return (weights @ both.flatten(2)).view(both.shape[0], frames, *both.shape[2:])


def compose_linears(inner: nn.Linear, outer: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of `outer(inner(x))` as one linear: W_o (W_i x + b_i) + b_o = (W_o W_i) x + (W_o b_i + b_o).
    Differentiable (the training forward uses it under autograd); `ila.fuse` stores its result once."""
    return outer.weight @ inner.weight, F.linear(inner.bias, outer.weight, outer.bias)


class Alignment(NamedTuple):
    """What the alignment of one block produces."""

    aligned_tokens: torch.Tensor       # (B, T, L, D): masked patch features per frame, message class token first
    interactive_tokens: torch.Tensor   # (B, T, L, D): trunk features per frame after temporal conv and 128->D,
                                       # and through `skip` (the block's temporal_skip_fc) when given or fused
    pooled_prev: torch.Tensor          # (B, P, D): sum over cells of m_{t} * z_t   (the MI vectors of a pair)
    pooled_cur: torch.Tensor           # (B, P, D): sum over cells of m_{t+1} * z_{t+1}
    points: torch.Tensor               # (B, P, 4): interactive points, scaled to [-0.75, 0.75]
    mask_rows: torch.Tensor            # (B, P, 2, S) per-axis mask weights (previous, current)
    mask_cols: torch.Tensor            # (B, P, 2, S)


class ImplicitAlignment(nn.Module):
    """Align adjacent frames at their interactive points (paper Sec. 3.2, release form).

    Input: the block's message features A `(B, T, L, D)` (class token first, then S*S patch tokens).
    `pairing`: which frame each frame is paired with (`pair_indices`; release: `adjacent`). A subclass swaps the
    mask step (`masks`); one without interactive points sets `predicts_points = False` (no point head is built).
    """

    predicts_points = True

    def __init__(self, dim: int, grid: int, trunk: str = "separable", hidden: int = 256, point_hidden: int = 128,
                 pairing: str = "adjacent"):
        super().__init__()
        pair_indices(2, pairing)            # refuses an unknown pairing here rather than in the forward pass
        self.grid = grid
        self.pairing = pairing
        self.interactive_block = interactive_block(dim, hidden, trunk)
        if self.predicts_points:
            self.point_head = InteractivePointHead(hidden, point_hidden)
        half = hidden // 2
        self.token_conv = nn.Conv3d(half, half, (3, 1, 1), padding=(1, 0, 0))  # temporal conv over frames
        self.token_proj = Linear(half, dim)
        self.class_proj = nn.Identity()  # the interactive class token as it is (`ila.fuse` puts the skip here)
        self.delta = 0.0  # disturbance offset used in training; set by the model

    def forward(self, a: torch.Tensor, skip: nn.Module | None = None) -> Alignment:
        """`skip`: what reads the interactive tokens (the block's `temporal_skip_fc`), applied here. A plain
        linear is folded into `token_proj` on the fly: one C/2 -> D linear on every token instead of C/2 -> D then
        D -> D (the product of the two weights, `(D, D) x (D, C/2)`, costs far less than a D -> D linear over
        B*T*N tokens, and autograd differentiates through it). Anything else runs after the projection: the
        identity once `ila.fuse` has folded it, a fused linear when the `skip` rewrite was left out."""
        b, t, length, dim = a.shape
        s = self.grid
        cls, patches = a[:, :, :1], a[:, :, 1:]                          # (B,T,1,D), (B,T,N,D)
        if self.pairing == "adjacent":                                    # the release: slices, no index copies
            prev_frames, cur_frames = patches[:, :-1], patches[:, 1:]
        else:
            prev_index, cur_index = (torch.tensor(i, device=a.device) for i in pair_indices(t, self.pairing))
            prev_frames, cur_frames = patches[:, prev_index], patches[:, cur_index]
        # the tokens are already channels-last feature maps: no transpose copy, NHWC convolutions
        pairs = torch.cat([prev_frames, cur_frames], dim=-1)             # (B, P, N, 2D): [P_t ; C_t]
        pairs = pairs.view(b * (t - 1), s, s, 2 * dim).permute(0, 3, 1, 2)  # (B*P, 2D, S, S) channels-last
        features = self.interactive_block(pairs)                         # (B*P, C, S, S)
        points, rows, cols = self.masks(features, b)

        masks = (rows.unsqueeze(-1) * cols.unsqueeze(-2)).flatten(-2)    # (B, P, 2, N)
        # P~_t = m_P * P_t and C~_t = m_C * C_t are never materialised: the MI vectors (their sums over cells) are
        # one contraction with the masks, and a frame's two masks are merged before one multiply with its tokens
        pooled_prev = torch.einsum("bpn,bpnd->bpd", masks[:, :, 0], prev_frames)
        pooled_cur = torch.einsum("bpn,bpnd->bpd", masks[:, :, 1], cur_frames)
        aligned = patches * self.merge(masks[:, :, 0], masks[:, :, 1]).unsqueeze(-1)
        aligned = torch.cat([cls, aligned], dim=2)                        # (B, T, L, D)

        prev_half, cur_half = features.unflatten(0, (b, t - 1)).chunk(2, dim=2)
        per_frame = self.merge(prev_half, cur_half)                       # (B, T, C/2, S, S)
        conv = self.token_conv(per_frame.transpose(1, 2))                 # (B, C/2, T, S, S)
        conv = conv.flatten(3).permute(0, 2, 3, 1)                        # (B, T, N, C/2)
        if isinstance(skip, nn.Linear):                                   # the class token through skip alone
            folded = F.linear(conv, *compose_linears(self.token_proj, skip))
            interactive = torch.cat([skip(self.class_proj(cls)), folded], dim=2)
        else:
            interactive = torch.cat([self.class_proj(cls), self.token_proj(conv)], dim=2)
            interactive = interactive if skip is None else skip(interactive)
        return Alignment(aligned, interactive, pooled_prev, pooled_cur, points, rows, cols)

    def masks(self, features: torch.Tensor, batch: int) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """The mask step: trunk features `(B*P, C, S, S)` -> (points `(B, P, 4)`, mask rows, mask columns, each
        `(B, P, 2, S)`): the soft masks around the predicted interactive points (with the training disturbance)."""
        points = POINT_RANGE * self.point_head(features, batch)          # (B, P, 4)
        rows, cols = alignment_masks(points, self.grid, self.delta if self.training else 0.0)
        return points, rows, cols

    def pair_frames(self, frames: int) -> torch.Tensor:
        """The frame indices `(T-1, 2)` of each pair's (previous, current) side under this alignment's pairing."""
        return torch.tensor(pair_indices(frames, self.pairing)).T

    def merge(self, prev: torch.Tensor, cur: torch.Tensor) -> torch.Tensor:
        """Per-frame view of pair quantities `(B, P, ...)` x 2 -> `(B, T, ...)` under this alignment's pairing."""
        if self.pairing == "adjacent":
            return merge_pairs(prev, cur)
        frames = prev.shape[1] + 1
        return merge_indexed(prev, cur, *pair_indices(frames, self.pairing), frames)

    def fuse(self, rewrites: Collection[str] | None = None) -> None:
        """Rewrite the alignment in place for inference (`ila.fuse`; `rewrites`: names from FUSIONS, None: all).
        `point_head`: the point head's grouped 1x1 temporal convolutions as block-diagonal linears; `bn`: every
        Conv2d + BatchNorm2d [+ MaxPool2d] + ReLU of the trunk and the point head as one folded convolution.
        (The block's `skip` rewrite, which reaches into `token_proj` and `class_proj`, is `ISTBlock.fuse`.)"""
        rewrites = FUSIONS if rewrites is None else rewrites
        head = getattr(self, "point_head", None)
        if "point_head" in rewrites and head is not None and isinstance(head.temporal, nn.Sequential):
            head.temporal = GroupedPointwise(head.temporal)
        if "bn" in rewrites:
            onednn = "onednn" in rewrites
            self.interactive_block = fold_conv_bn_relu(self.interactive_block, onednn)
            if head is not None:
                head.spatial = fold_conv_bn_relu(head.spatial, onednn)


def alignment_loss(pooled_prev: torch.Tensor, pooled_cur: torch.Tensor) -> torch.Tensor:
    """The release's auxiliary loss of a block: mean over pairs of 1 - cos(p_t, c_t)."""
    return (1.0 - F.cosine_similarity(pooled_prev, pooled_cur, dim=-1, eps=1e-8)).mean()
