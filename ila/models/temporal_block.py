"""The temporal block: the base class of every video block, and what a variant's blocks declare about themselves.

A temporal variant (`ila.models.registry`) builds one block per vision layer, each a `TemporalBlock` (usually also
CLIP's `ResidualAttentionBlock`, whose parameters keep CLIP's names). A block maps tokens `(B*T, L, D)` ->
(tokens `(B*T, L', D)`, alignment loss `()`, points `(B, T-1, 4)` or None), L' = `queries` when given, else L.
`TemporalBlock` defines no `forward` of its own: listed after CLIP's block among the bases, `super().forward`
stays CLIP's.

What the rest of ila reads from the block instead of guessing from parameter names:

- `trainable`: the block's own new parameters, as patterns relative to the block, each with the release optimizer
  group it joins (`message` or `temporal`). A pattern is an fnmatch pattern (`"temporal_*"`, `"gate"`) or a module
  prefix that covers everything under it (`"alignment"` covers `alignment.token_proj.weight`); the first pattern
  that matches decides. These parameters train under `model.freeze_clip=true`; every other parameter of the block is
  CLIP's (group `clip`, frozen with the towers). `ila.models.ila.parameter_group_map(model)` reads them, and through
  it `ILAModel.set_trainable` and `ila.engine.optim.param_groups`.
- `fuse(rewrites)`: rewrite the block in place for inference with the same outputs (`ila.fuse` calls every module's
  `fuse`; here: nothing to rewrite).
- `has_alignment_maps` / `alignment_maps(run)`: whether the block gives interactive points and masks for pictures,
  and the maps of one forward pass (`ILAModel.alignment_maps`).
"""
from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Callable, ClassVar, Collection, Mapping

import torch
from torch import nn

# the release groups a block's own parameters may join (`ila.engine.optim.release_rates`); the rest are `clip`
BLOCK_GROUPS = ("message", "temporal")


def pattern_matches(pattern: str, name: str) -> bool:
    """Whether a parameter `name` (relative to its block) falls under `pattern`: an fnmatch match of the whole
    name, or `pattern` names a module above it (`"alignment"` covers `"alignment.token_proj.weight"`)."""
    return fnmatchcase(name, pattern) or name.startswith(pattern + ".")


class TemporalBlock(nn.Module):
    """Base class of a temporal variant's video blocks: declares what of the block trains and how it fuses."""

    trainable: ClassVar[Mapping[str, str]] = {}   # pattern (relative to the block) -> group (`BLOCK_GROUPS`)
    has_alignment_maps: ClassVar[bool] = False    # True: `alignment_maps` gives interactive points and masks

    def __init_subclass__(cls, **kwargs):
        """Check a subclass's `trainable` when the class is defined: a wrong group would otherwise surface only as
        a parameter that does not train."""
        super().__init_subclass__(**kwargs)
        for pattern, group in dict(cls.trainable).items():
            if not isinstance(pattern, str) or not pattern:
                raise TypeError(f"{cls.__name__}.trainable: a pattern is a non-empty string, not {pattern!r}")
            if group not in BLOCK_GROUPS:
                raise TypeError(f"{cls.__name__}.trainable[{pattern!r}] = {group!r}: a block's own parameters "
                                f"join one of {', '.join(BLOCK_GROUPS)}")

    def parameter_group(self, name: str) -> str:
        """The group of the block's parameter (or buffer) `name`, relative to the block: the group of the first
        `trainable` pattern it falls under, else `clip`."""
        return next((group for pattern, group in self.trainable.items() if pattern_matches(pattern, name)), "clip")

    def fuse(self, rewrites: Collection[str] | None = None) -> None:
        """Rewrite the block in place for inference, with the same outputs; `rewrites`: the names from
        `ila.models.fuse.FUSIONS` to apply (None: all). Called by `ila.fuse` (which also folds the CLIP modules
        inside the block); a plain block has nothing of its own to rewrite."""

    def alignment_maps(self, run: Callable[[], object]) -> dict[str, torch.Tensor]:
        """The alignment maps of this block in the forward pass `run()` performs: points `(B, T-1, 4)` and masks
        `(B, T-1, 2, S, S)` (previous, current frame of each pair). Only where `has_alignment_maps`."""
        raise ValueError(f"{type(self).__name__} gives no alignment maps (its variant does not align frames)")
