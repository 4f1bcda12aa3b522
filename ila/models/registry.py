"""The temporal variants: each one is registered once, and everything that names variants asks here.

A variant is a function that builds a model's video blocks from its config, with the block class passed in
(`block_fn`), decorated once:

    @register_temporal("mean", description="plain CLIP blocks, frames averaged", min_frames=1)
    def frame_blocks(cfg: ModelConfig, block_fn=FrameBlock) -> list[nn.Module]:
        return [block_fn(cfg.vision_width, cfg.vision_width // 64, cfg.quick_gelu) for _ in range(cfg.vision_layers)]

Every block is a `TemporalBlock` (`ila.models.temporal_block`): it maps tokens `(B*T, L, D)` -> (tokens, alignment
loss, points or None) and declares which of its parameters are its own (`trainable`: they train while CLIP is
frozen, in the optimizer group they name), how it fuses for inference and whether it gives alignment maps.
`temporal_variants()` lists the names (the config's allowed `model.temporal` values, the CLI's `--temporal`
choices, the demo and the benchmarks read it); `create_blocks(cfg)` builds `cfg.temporal`'s blocks. A new
variant is one module with one registration, imported before the config that names it is validated.
"""
from __future__ import annotations

import importlib
import reprlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from ila.errors import UserError
from ila.models.temporal_block import TemporalBlock

if TYPE_CHECKING:
    from torch import nn

    from ila.models.config import ModelConfig

# the modules that register ila's own variants, imported on the first look-up (they import torch and the blocks)
BUILTIN_MODULES = ("ila.models.ist_block", "ila.models.temporal", "ila.models.shift", "ila.models.pool")


@dataclass(frozen=True)
class TemporalVariant:
    """One registered variant: how its blocks are built and what the rest of ila needs to know about it."""

    name: str
    build: Callable[..., list]          # (cfg, block_fn=<its block class>) -> one block per vision layer
    description: str                    # what the blocks are, for model cards and help; may name model keys as
    #                                     {key} (e.g. "{interactive_block}"), filled from the model's config
    min_frames: int = 2                 # frames per clip the variant needs (1: no temporal modelling)
    reference: bool = False             # left out of the default comparison (the demo's rows): a cost reference
    #                                     (`joint`) or an ablation (`shift`, `pool`) rather than a baseline
    check: Callable | None = None       # (cfg) -> None: raises UserError for a config the variant cannot build

    def describe(self, model: dict) -> str:
        """The description with the model's config values filled in."""
        try:
            return self.description.format_map(model)
        except (KeyError, IndexError, ValueError, AttributeError):
            return self.description


_VARIANTS: dict[str, TemporalVariant] = {}
_builtin_loaded = False
_REPR = reprlib.Repr()                  # a bounded repr of a refused value (it may be anything a config held)
_REPR.maxstring = _REPR.maxother = 60


def register_temporal(name: str, *, description: str, min_frames: int = 2, reference: bool = False,
                      check: Callable | None = None):
    """Decorator: register the decorated block builder as temporal variant `name` (returned unchanged)."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"a temporal variant's name is a short identifier, not {name!r}")

    def decorate(build):
        if getattr(build, "__module__", None) not in BUILTIN_MODULES:
            _load_builtin()             # ila's own variants first, whichever module registers before them
        if name in _VARIANTS and _VARIANTS[name].build is not build:
            raise ValueError(f"temporal variant {name!r} is already registered (by {_VARIANTS[name].build.__module__})")
        _VARIANTS[name] = TemporalVariant(name, build, description, min_frames, reference, check)
        return build

    return decorate


def unregister_temporal(name: str) -> TemporalVariant:
    """Remove variant `name` (and return it), e.g. a variant a test registered for itself."""
    _load_builtin()
    return _VARIANTS.pop(name)


def _load_builtin() -> None:
    global _builtin_loaded
    if not _builtin_loaded:
        _builtin_loaded = True
        for module in BUILTIN_MODULES:
            importlib.import_module(module)


def _order(variant: TemporalVariant) -> int:
    """ila's own variants in BUILTIN_MODULES' order (whichever module happened to be imported first), then the
    others in registration order."""
    module = getattr(variant.build, "__module__", None)
    return BUILTIN_MODULES.index(module) if module in BUILTIN_MODULES else len(BUILTIN_MODULES)


def temporal_variants(references: bool = True) -> tuple[str, ...]:
    """The registered variant names: ila's own in BUILTIN_MODULES' order, then the others in registration order;
    `references=False` leaves out cost references (`joint`, and the ablations `shift` and `pool`): the variants a
    comparison (the demo) trains by default."""
    _load_builtin()
    ordered = sorted(_VARIANTS.values(), key=_order)          # stable: registration order within a module
    return tuple(v.name for v in ordered if references or not v.reference)


def temporal_variant(name: str, key: str = "model.temporal") -> TemporalVariant:
    """The registered variant `name`; a one-line UserError naming `key` and the registered names otherwise."""
    _load_builtin()
    variant = _VARIANTS.get(name) if isinstance(name, str) else None
    if variant is None:
        raise UserError(f"{key}={_REPR.repr(name)} is not allowed; use one of {', '.join(temporal_variants())}")
    return variant


def create_blocks(cfg: ModelConfig, block_fn: Callable | None = None) -> list[nn.Module]:
    """The video blocks of `cfg.temporal` for `cfg`, one per vision layer; `block_fn` replaces the variant's
    block class (same constructor arguments), e.g. a subclass to experiment with."""
    variant = temporal_variant(cfg.temporal)
    blocks = variant.build(cfg) if block_fn is None else variant.build(cfg, block_fn=block_fn)
    odd = next((b for b in blocks if not isinstance(b, TemporalBlock)), None)
    if odd is not None:    # its parameters would all pass for CLIP's: frozen under freeze_clip, in the clip group
        raise TypeError(f"temporal variant {variant.name!r} built a {type(odd).__name__}, which is not a "
                        f"TemporalBlock: derive it from ila.models.temporal_block.TemporalBlock and declare its "
                        f"own parameters in `trainable`")
    return blocks
