"""Variants own what is theirs: every block of every registered variant is a `TemporalBlock` that declares its own
parameters (`trainable`), fuses itself and says whether it gives alignment maps; freezing, the optimizer's groups,
`ila.fuse` and `alignment_maps` read those declarations, never parameter-name conventions."""
import pytest
import torch
from torch import nn

import ila
from ila.config import load_config
from ila.engine.optim import create_optimizer, param_groups
from ila.models.clip import ResidualAttentionBlock
from ila.models.ila import ILAModel, parameter_group, parameter_group_map
from ila.models.registry import BUILTIN_MODULES, register_temporal, temporal_variant, temporal_variants, \
    unregister_temporal
from ila.models.temporal_block import BLOCK_GROUPS, TemporalBlock, pattern_matches

VARIANTS = temporal_variants()      # every registered variant, ila's own and any registered before collection


class GatedShiftBlock(ResidualAttentionBlock, TemporalBlock):
    """A test variant whose own parameters follow no naming convention: `x + gate * foo(previous frame's x)`,
    then CLIP's block. `fuse` folds the gate into `foo`."""

    trainable = {"foo": "temporal", "gate": "message"}

    def __init__(self, width: int, heads: int, frames: int, quick_gelu: bool = True):
        super().__init__(width, heads, quick_gelu)
        self.frames = frames
        self.foo = nn.Linear(width, width)
        self.gate = nn.Parameter(torch.tensor(0.5))

    def forward(self, x: torch.Tensor, queries: int | None = None):
        """Tokens `(B*T, L, D)` -> (tokens `(B*T, L', D)`, zero loss, no points)."""
        bt, length, width = x.shape
        previous = x.view(-1, self.frames, length, width).roll(1, dims=1).view(bt, length, width)
        x = x + self.gate * self.foo(previous)
        return super().forward(x, queries), x.new_zeros(()), None

    def fuse(self, rewrites=None) -> None:
        with torch.no_grad():
            self.foo.weight.mul_(self.gate)
            self.foo.bias.mul_(self.gate)
            self.gate.fill_(1.0)


@pytest.fixture
def gated():
    """The `gated` variant, registered for one test."""
    @register_temporal("gated", description="gated previous-frame mixing")
    def gated_blocks(cfg, block_fn=GatedShiftBlock):
        return [block_fn(cfg.vision_width, cfg.vision_width // 64, cfg.num_frames, cfg.quick_gelu)
                for _ in range(cfg.vision_layers)]
    try:
        yield gated_blocks
    finally:
        unregister_temporal("gated")


def tiny_config(temporal, *overrides):
    return load_config("tiny", [f"model.temporal={temporal}", *overrides])


def blocks_of(model):
    return [(f"visual.transformer.resblocks.{i}.", b) for i, b in enumerate(model.visual.transformer.resblocks)]


def declared(model) -> dict[str, str]:
    """The groups the blocks declare, worked out here from `trainable` (not through `parameter_group_map`)."""
    out = {}
    for prefix, block in blocks_of(model):
        for name, _ in block.named_parameters():
            group = next((g for pattern, g in block.trainable.items() if pattern_matches(pattern, name)), None)
            if group is not None:
                out[prefix + name] = group
    return out


def with_live_branches(model):
    """Every non-CLIP tensor of the blocks moved off its initialisation (zero-initialised projections, BatchNorm
    statistics), so each branch reaches the logits and each fold has something to fold."""
    torch.manual_seed(1)
    with torch.no_grad():
        groups = parameter_group_map(model, buffers=True)
        for name, t in model.state_dict().items():
            if groups[name] in BLOCK_GROUPS and t.is_floating_point():
                t.add_(0.1 * torch.rand_like(t))     # positive: BatchNorm variances stay positive
    return model


def test_a_variant_with_arbitrary_names_trains_its_own_parameters(gated):
    cfg = tiny_config("gated", "model.freeze_clip=true", "train.lr=1e-2", "train.optimizer_groups=release")
    torch.manual_seed(0)
    model = ILAModel(cfg.model)
    names = dict(model.named_parameters())
    own = {n for n in names if n.endswith((".foo.weight", ".foo.bias", ".gate"))}
    assert len(own) == 3 * cfg.model.vision_layers
    trainable = {n for n, p in names.items() if p.requires_grad}
    assert own <= trainable and trainable - own == {n for n in names if n.startswith(("head.mit.", "head.classifier."))}

    group_of = parameter_group_map(model)
    assert {group_of[n] for n in own if ".foo." in n} == {"temporal"} and \
        {group_of[n] for n in own if n.endswith(".gate")} == {"message"}
    optimizer = create_optimizer(model, cfg)
    in_groups = {id(p): g["name"] for g in optimizer.param_groups for p in g["params"]}
    assert {in_groups[id(names[n])] for n in own} == {"temporal", "temporal_no_decay", "message_no_decay"}
    assert len(in_groups) == len(trainable)

    before = {n: p.detach().clone() for n, p in names.items()}
    video = torch.randn(2, cfg.model.num_frames, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    optimizer.zero_grad()
    model(video).logits.square().mean().backward()
    optimizer.step()
    assert all(not torch.equal(names[n], before[n]) for n in own)
    assert all(torch.equal(p, before[n]) for n, p in names.items() if n not in trainable)


def test_ila_fuse_calls_a_variant_blocks_own_fuse(gated):
    torch.manual_seed(0)
    model = ILAModel(tiny_config("gated").model).eval()
    video = torch.randn(2, 4, 3, 32, 32)
    with torch.inference_mode():
        before = model(video).logits
    ila.fuse(model)
    assert all(b.gate.item() == 1.0 for _, b in blocks_of(model))          # folded by the block itself
    with torch.inference_mode():
        after = model(video).logits
    assert ((after - before).abs().max() / before.abs().max()).item() < 1e-5


def test_a_block_that_is_not_a_temporal_block_is_refused():
    @register_temporal("plain", description="CLIP blocks that declare nothing")
    def plain_blocks(cfg):
        return [ResidualAttentionBlock(cfg.vision_width, cfg.vision_width // 64) for _ in range(cfg.vision_layers)]
    try:
        with pytest.raises(TypeError, match="'plain' built a ResidualAttentionBlock, which is not a TemporalBlock"):
            ILAModel(tiny_config("plain").model)
    finally:
        unregister_temporal("plain")
    with pytest.raises(TypeError, match=r"trainable\['w'\] = 'clip': a block's own parameters join one of message"):
        type("Wrong", (TemporalBlock,), {"trainable": {"w": "clip"}})


@pytest.mark.parametrize("temporal", VARIANTS)
def test_every_variant_trains_what_its_blocks_declare(temporal):
    model = ILAModel(tiny_config(temporal, "model.freeze_clip=true").model)
    own = declared(model)
    for prefix, block in blocks_of(model):
        assert isinstance(block, TemporalBlock)
        names = [n for n, _ in block.named_parameters()]
        for pattern in block.trainable:        # no stale pattern: each one names something of the block
            assert any(pattern_matches(pattern, n) for n in names), (type(block).__name__, pattern)
    head = {n for n, _ in model.named_parameters() if n.startswith(("head.mit.", "head.classifier."))}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(own) | head
    group_of = parameter_group_map(model)
    assert {n: group_of[n] for n in own} == own
    assert {g for n, g in group_of.items() if n not in own and n not in head} <= {"clip", "prompts"}
    groups = param_groups(model, 8e-6, 3e-3)
    assert sum(len(g["params"]) for g in groups) == len(trainable)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(g["name"].removesuffix("_no_decay") == group_of[names[id(p)]] for g in groups for p in g["params"])
    if temporal_variant(temporal).build.__module__ in BUILTIN_MODULES:    # the name-only guess agrees for ila's own
        assert parameter_group_map(model, buffers=True) == {k: parameter_group(k) for k in model.state_dict()}


@pytest.mark.parametrize("head", ["classifier", "text"])
@pytest.mark.parametrize("temporal", VARIANTS)
def test_every_variant_fuses_to_the_same_outputs(temporal, head):
    torch.manual_seed(0)
    model = with_live_branches(ILAModel(tiny_config(temporal, f"model.head={head}").model)).eval()
    video = torch.randn(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    text = torch.randn(3, 64, generator=torch.Generator().manual_seed(1)) if head == "text" else None
    with torch.inference_mode():
        before = model(video, text_features=text).logits
        ila.fuse(model)
        after = model(video, text_features=text).logits
    assert ((after - before).abs().max() / before.abs().max()).item() < 1e-5


@pytest.mark.parametrize("temporal", VARIANTS)
def test_alignment_maps_come_from_the_blocks_that_have_them(temporal):
    cfg = tiny_config(temporal).model
    model = ILAModel(cfg).eval()
    blocks = [b for _, b in blocks_of(model)]
    assert model.has_alignment_maps == all(b.has_alignment_maps for b in blocks)
    video = torch.randn(2, 4, 3, 32, 32)
    if model.has_alignment_maps:
        maps = model.alignment_maps(video, block=0)
        assert maps["points"].shape == (2, 3, 4) and maps["masks"].shape == (2, 3, 2, cfg.grid, cfg.grid)
        assert all(getattr(b, "last", None) is None for b in blocks)   # nothing is kept after the pass
    else:
        with pytest.raises(ValueError, match="alignment maps exist only for blocks that align frames"):
            model.alignment_maps(video)
