"""Point tracking, measured: how far a model's interactive points sit from the object they should follow.

`point_error` is the mean distance, in patches, between each interactive point (a pair side's point, in the frame
that side reads under `model.align_pairing`) and that frame's object centre after the test view's resize and crop
(`ila.data.positions.view_centres`); `centre_point_error` is the same distance for a point fixed at the grid
centre, the figure a model whose points never move gets. Frames where the object is invisible are left out.
`ila eval` reports both (in metrics.json) when the evaluated set carries positions (`positions.json`, written by
`ila make-dataset`) and the model has a block with alignment maps; the points come from the same forward pass as
the scores (`ila.engine.evaluate.evaluate_split`).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ila.data.positions import Positions, view_centres


def tracking_block(model: nn.Module) -> int | None:
    """The index of the last video block that gives alignment maps (`TemporalBlock.has_alignment_maps`), or None."""
    blocks = model.visual.transformer.resblocks
    found = [i for i, b in enumerate(blocks) if getattr(b, "has_alignment_maps", False)]
    return found[-1] if found else None


def point_errors(points: torch.Tensor, centres: torch.Tensor, pair_frames: torch.Tensor, patch: int,
                 grid: int) -> dict:
    """points `(N, V, P, 4)` (x_prev, y_prev, x_cur, y_cur) in grid coordinates (cell k at 2k/(grid-1) - 1);
    centres `(N, V, T, 2)` object centres (x, y) in pixels of the view (NaN: invisible); pair_frames `(P, 2)`: the
    frame of each pair's (previous, current) side -> {"point_error", "centre_point_error": mean distances in
    patches over the visible pair sides, "point_sides": how many}."""
    where = (points.double().unflatten(-1, (2, 2)) + 1) / 2 * (grid - 1)       # (N, V, P, 2, 2) in cells
    target = centres.double()[:, :, pair_frames] / patch - 0.5                   # (N, V, P, 2, 2): cell k at k
    visible = torch.isfinite(target).all(-1)                                     # (N, V, P, 2)
    moved = (where - target).norm(dim=-1)[visible]
    fixed = (target - (grid - 1) / 2).norm(dim=-1)[visible]
    sides = int(visible.sum())
    return {"point_error": float(moved.mean()) if sides else None,
            "centre_point_error": float(fixed.mean()) if sides else None, "point_sides": sides}


class PointRecorder:
    """Wraps a scoring function `views (B, V, T, 3, S, S) -> (B, K)` so that the same forward pass also returns
    the interactive points of video block `block` (`TemporalBlock.alignment_maps`): `(B, K + V*P*4)`, for
    `run_videos`; `split` takes the gathered rows apart again."""

    def __init__(self, score, model: nn.Module, block: int):
        self.score, self.target, self.block = score, model.visual.transformer.resblocks[block], block
        self.pair_frames: torch.Tensor | None = None          # (P, 2), from the maps

    def __call__(self, views: torch.Tensor) -> torch.Tensor:
        out = []
        maps = self.target.alignment_maps(lambda: out.append(self.score(views)))
        self.pair_frames = maps["frames"]
        return torch.cat([out[0].float(), maps["points"].float().reshape(views.shape[0], -1)], 1)

    def split(self, rows: torch.Tensor, views: int, pairs: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Gathered rows `(N, K + V*P*4)` -> scores `(N, K)`, points `(N, V, P, 4)`."""
        classes = rows.shape[1] - views * pairs * 4
        return rows[:, :classes], rows[:, classes:].reshape(rows.shape[0], views, pairs, 4)


def tracking_metrics(points: torch.Tensor, paths: list[str], positions: Positions, pair_frames: torch.Tensor,
                     cfg, clips: int, crops: int, block: int) -> dict:
    """`point_errors` of the videos at `paths` whose centres `positions` holds; points `(N, V, P, 4)` in the
    order of `paths`. Adds which block was read and how many videos counted (`point_videos`)."""
    rows, centres = [], []
    for i, path in enumerate(paths):
        where = positions.centres(path)
        if where is None:
            continue
        rows.append(i)
        centres.append(view_centres(where, positions.size, cfg.data.num_frames, cfg.data.input_size, clips, crops,
                                    cfg.data.sampling, cfg.data.frame_interval))
    result = {"point_block": block % cfg.model.vision_layers, "point_videos": len(rows)}
    if not rows:
        return {**result, "point_error": None, "centre_point_error": None, "point_sides": 0}
    found = point_errors(points[rows], torch.from_numpy(np.stack(centres)), pair_frames,
                         cfg.model.vision_patch_size, cfg.model.grid)
    return {**found, **result}
