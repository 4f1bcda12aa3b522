"""Weights trained at T frames and size S, used at T' frames and size S': position embeddings resampled.

Three kinds of tensor depend on the clip geometry; everything else in an ILA model is independent of it:

    visual.positional_embedding                       (1 + g*g, D)  g = size // patch: the spatial grid
    head.mit.positional_embedding                     (1, T, D)     the MIT head's frame positions
    visual.transformer.resblocks.*.temporal_positional_embedding  (T, D)  divided attention's frame positions

The grid is resampled with timm's `resample_abs_pos_embed` (bicubic, the class token kept apart), as timm and
open_clip do for a new image size; frame positions with the same function on a 1 x T grid (bilinear). A tensor
whose shape already fits is returned unchanged, so T' = T and S' = S load exactly the saved weights.
"""
from __future__ import annotations

import torch
from torch import nn


def _grid(tokens: int) -> int:
    side = round(tokens ** 0.5)
    if side * side != tokens:
        raise ValueError(f"{tokens} patch positions do not form a square grid")
    return side


def resample_spatial(posemb: torch.Tensor, grid: int) -> torch.Tensor:
    """(1 + g*g, D) -> (1 + grid*grid, D): the class position kept, the patch grid resampled (bicubic)."""
    from timm.layers import resample_abs_pos_embed

    old = _grid(posemb.shape[0] - 1)
    if old == grid:
        return posemb
    out = resample_abs_pos_embed(posemb[None].float(), new_size=[grid, grid], old_size=[old, old], num_prefix_tokens=1)
    return out[0].to(posemb.dtype)


def resample_temporal(posemb: torch.Tensor, frames: int) -> torch.Tensor:
    """(..., T, D) -> (..., frames, D) by linear interpolation over time (leading axes of size 1 kept)."""
    from timm.layers import resample_abs_pos_embed

    old = posemb.shape[-2]
    if old == frames:
        return posemb
    flat = posemb.reshape(1, old, posemb.shape[-1]).float()
    out = resample_abs_pos_embed(flat, new_size=[1, frames], old_size=[1, old], num_prefix_tokens=0,
                                 interpolation="bilinear", antialias=False)
    return out.reshape(*posemb.shape[:-2], frames, posemb.shape[-1]).to(posemb.dtype)


def fit_position_embeddings(state_dict: dict, model: nn.Module) -> dict:
    """`state_dict` with every position embedding resampled to the shape `model` has (a new dict; the other
    tensors are the same objects). Tensors of any other kind are left for the strict load to report."""
    own = model.state_dict()
    out = dict(state_dict)
    for key, target in own.items():
        source = state_dict.get(key)
        if source is None or source.shape == target.shape or source.shape[-1] != target.shape[-1]:
            continue
        if key.endswith("visual.positional_embedding") and source.dim() == 2:
            out[key] = resample_spatial(source, _grid(target.shape[0] - 1))
        elif key.endswith("mit.positional_embedding") or key.endswith("temporal_positional_embedding"):
            out[key] = resample_temporal(source, target.shape[-2])
    return out
