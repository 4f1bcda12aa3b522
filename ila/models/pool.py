"""`pool`: ILA's pair pathway with average pooling in place of the alignment mask (paper Sec. 4.3.1, "CLIP + Average
Pooling").

The IST block as it is (message projection, the interactive trunk on each adjacent pair, the temporal convolution
and the two skip projections, under the same parameter names, so freezing and the optimizer's groups are ILA's),
except for the mask step: no interactive points and no point-prediction head; every cell of the patch grid weighs 1,
so the "aligned" tokens are the frames' own message features and each pair's MI vectors are plain sums over the grid
(the paper form's MI token, their mean over cells, is the average pooling). Nothing is aligned, so there is no
alignment loss (zero) and no alignment maps.
"""
from __future__ import annotations

import torch
from torch import nn

from ila.errors import UserError
from ila.models.alignment import ImplicitAlignment
from ila.models.ist_block import ISTBlock, alignment_blocks
from ila.models.registry import register_temporal
from ila.models.temporal_block import TemporalBlock


class PooledPairs(ImplicitAlignment):
    """`ImplicitAlignment` with the mask step swapped for uniform weights (average pooling over the grid)."""

    predicts_points = False  # no point head is built

    def masks(self, features: torch.Tensor, batch: int) -> tuple[None, torch.Tensor, torch.Tensor]:
        """No points; mask rows and columns of ones `(B, P, 2, S)`: every cell counts alike."""
        ones = features.new_ones(batch, features.shape[0] // batch, 2, self.grid)
        return None, ones, ones


class PoolBlock(ISTBlock):
    """`pool`: an IST block whose pairs are average pooled instead of aligned; zero alignment loss, no points."""

    alignment_class = PooledPairs
    has_alignment_maps = False
    alignment_maps = TemporalBlock.alignment_maps   # refuses: there are no points or masks to draw

    def pair_loss(self, al) -> torch.Tensor:
        return al.pooled_prev.new_zeros(())


def _check_pool_sizes(cfg) -> None:
    """What the pooled pathway needs of a config: channel counts the interactive tokens can halve."""
    if cfg.align_hidden % 2:
        raise UserError(f"model.align_hidden={cfg.align_hidden} must be even (the interactive tokens take "
                        f"half of its channels)")


@register_temporal("pool", description="IST blocks with average pooling in place of the alignment mask",
                   check=_check_pool_sizes, reference=True)  # an ablation: out of the demo's default comparison
def pool_blocks(cfg, block_fn=PoolBlock) -> list[nn.Module]:
    """`pool`: one pooled IST block per layer (`model.align_blocks`, `model.align_pairing` apply as for `ila`)."""
    return alignment_blocks(cfg, block_fn)
