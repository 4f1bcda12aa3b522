"""The paper's ablations in miniature (Sec. 4.3.1, 4.3.4): the `shift` and `pool` variants, and ILA's
`model.align_pairing` / `model.align_blocks` options. (The registry-wide checks every variant passes, `shift`'s and
`pool`'s too, are tests/test_models_variants.py's; the release defaults' parity is tests/test_models_parity.py's.)"""
import pytest
import torch

from ila.config import REQUIRED_MODEL_KEYS, load_config
from ila.errors import UserError
from ila.models.alignment import ImplicitAlignment, merge_indexed, merge_pairs, pair_indices
from ila.models.config import ModelConfig
from ila.models.ila import ILAModel, parameter_group_map
from ila.models.ist_block import ISTBlock
from ila.models.temporal import FrameBlock
from ila.models.pool import PoolBlock
from ila.models.shift import ShiftBlock, temporal_shift


def tiny(temporal, *overrides):
    return load_config("tiny", [f"model.temporal={temporal}", *overrides]).model


def video(frames=4, seed=0):
    return torch.randn(2, frames, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------------- shift

def test_shift_moves_an_eighth_of_the_channels_each_way():
    b, t, length, width = 2, 3, 2, 16
    x = torch.arange(b * t * length * width, dtype=torch.float32).view(b * t, length, width) + 1
    out = temporal_shift(x, t).view(b, t, length, width)
    clips = x.view(b, t, length, width)
    fold = width // 8
    assert torch.equal(out[:, 1:, :, :fold], clips[:, :-1, :, :fold])                    # forward in time
    assert torch.equal(out[:, 0, :, :fold], torch.zeros(b, length, fold))                # zero padded
    assert torch.equal(out[:, :-1, :, fold:2 * fold], clips[:, 1:, :, fold:2 * fold])    # backward in time
    assert torch.equal(out[:, -1, :, fold:2 * fold], torch.zeros(b, length, fold))
    assert torch.equal(out[..., 2 * fold:], clips[..., 2 * fold:])                       # the rest stays
    assert out.shape == clips.shape and not torch.equal(out, clips)


def test_shift_has_no_parameters_of_its_own_and_sees_frame_order():
    torch.manual_seed(0)
    shift = ILAModel(tiny("shift", "model.mit_pos_embed=false", "model.head=classifier")).eval()
    torch.manual_seed(0)
    mean = ILAModel(tiny("mean", "model.mit_pos_embed=false", "model.head=classifier")).eval()
    assert all(type(b) is ShiftBlock for b in shift.visual.transformer.resblocks)
    assert {k: v.shape for k, v in shift.state_dict().items()} == {k: v.shape for k, v in mean.state_dict().items()}
    assert not {"message", "temporal"} & set(parameter_group_map(shift).values())
    mean.load_state_dict(shift.state_dict())
    clip = video()
    with torch.no_grad():
        for model, sensitive in ((shift, True), (mean, False)):   # an order-blind head: only the blocks see order
            forward, backward = model(clip).logits, model(clip.flip(1)).logits
            assert torch.allclose(forward, backward, atol=1e-5) is not sensitive, model.cfg.temporal


# ----------------------------------------------------------------------------------------------------- pool

def test_pool_has_no_point_head_and_no_alignment_loss():
    torch.manual_seed(0)
    pool = ILAModel(tiny("pool"))
    ila = ILAModel(tiny("ila"))
    blocks = pool.visual.transformer.resblocks
    assert all(type(b) is PoolBlock and not hasattr(b.alignment, "point_head") for b in blocks)
    assert not any("point_head" in k for k in pool.state_dict())
    # the same names where the pathway is ILA's, in the same groups (freezing and the optimizer's groups alike)
    assert set(pool.state_dict()) == {k for k in ila.state_dict() if ".point_head." not in k}
    ila_groups = parameter_group_map(ila, buffers=True)
    assert parameter_group_map(pool, buffers=True) == {k: ila_groups[k] for k in pool.state_dict()}
    assert {n for n, p in pool.named_parameters() if p.requires_grad} == \
        {n for n, p in ila.named_parameters() if p.requires_grad and ".point_head." not in n}
    assert not pool.has_alignment_maps
    out = pool(video())
    assert torch.equal(out.align_losses, torch.zeros(2)) and out.points is None
    out.logits.sum().backward()       # the pathway trains (through the interactive tokens once the skips move)
    assert blocks[0].alignment.token_proj.weight.grad is not None


def test_pool_weighs_every_cell_alike():
    torch.manual_seed(0)
    block = PoolBlock(64, 1, 4, 3, hidden=8, point_hidden=4).eval()
    a = torch.randn(2, 3, 17, 64)
    al = block.alignment(a)
    assert al.points is None
    assert torch.allclose(al.pooled_prev, a[:, :-1, 1:].sum(2), atol=1e-5)   # sums over the grid (mean * cells)
    assert torch.allclose(al.pooled_cur, a[:, 1:, 1:].sum(2), atol=1e-5)
    assert torch.allclose(al.aligned_tokens, a, atol=1e-6)                   # nothing is masked


# ----------------------------------------------------------------------------------------------------- pairing

def test_pair_indices():
    assert pair_indices(4, "adjacent") == ([0, 1, 2], [1, 2, 3])
    assert pair_indices(4, "first") == ([0, 0, 0], [1, 2, 3])
    assert pair_indices(4, "middle") == ([2, 2, 2], [0, 1, 3])
    assert pair_indices(5, "middle") == ([2, 2, 2, 2], [0, 1, 3, 4])
    with pytest.raises(ValueError, match="pairing must be one of adjacent, first, middle"):
        pair_indices(4, "last")


def test_indexed_merge_is_the_adjacent_merge_and_averages_a_reference_frame():
    prev, cur = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    assert torch.allclose(merge_indexed(prev, cur, *pair_indices(4, "adjacent"), 4), merge_pairs(prev, cur))
    first = merge_indexed(prev, cur, *pair_indices(4, "first"), 4)
    assert torch.allclose(first[:, 0], prev.mean(1)) and torch.allclose(first[:, 1:], cur)


@pytest.mark.parametrize("pairing", ["first", "middle"])
def test_align_pairing_pairs_the_right_frames(pairing):
    """With the release's zero-initialised point head every mask sits at the grid centre, the same for every frame:
    a pair's MI vectors are then one function g of the frame on each side, read off the adjacent pairing."""
    torch.manual_seed(0)
    adjacent = ImplicitAlignment(64, 4, "separable", 8, 4).eval()
    other = ImplicitAlignment(64, 4, "separable", 8, 4, pairing=pairing).eval()
    other.load_state_dict(adjacent.state_dict())                 # same names: the pairing holds no weights
    a = torch.randn(2, 4, 17, 64)
    pairs_in = []
    other.interactive_block.register_forward_pre_hook(lambda m, args: pairs_in.append(args[0]))
    with torch.no_grad():
        ref, al = adjacent(a), other(a)
    g = torch.cat([ref.pooled_prev, ref.pooled_cur[:, -1:]], dim=1)      # g(frame), frames 0..3
    prev, cur = pair_indices(4, pairing)
    assert prev == ([0, 0, 0] if pairing == "first" else [2, 2, 2])
    assert torch.allclose(al.pooled_prev, g[:, prev], atol=1e-5) and torch.allclose(al.pooled_cur, g[:, cur], atol=1e-5)
    patches = a[:, :, 1:]
    expected = torch.cat([patches[:, prev], patches[:, cur]], dim=-1).view(6, 4, 4, 128).permute(0, 3, 1, 2)
    assert torch.equal(pairs_in[0], expected)                    # the trunk reads [reference ; frame] pairs
    assert al.points.shape == (2, 3, 4) and al.aligned_tokens.shape == a.shape


def test_align_pairing_changes_the_model_and_keeps_its_weights():
    torch.manual_seed(0)
    adjacent = ILAModel(tiny("ila", "model.head=classifier")).eval()
    outputs = {}
    for pairing in ("adjacent", "first", "middle"):
        model = ILAModel(tiny("ila", "model.head=classifier", f"model.align_pairing={pairing}")).eval()
        model.load_state_dict(adjacent.state_dict())             # same keys under every pairing
        assert all(b.alignment.pairing == pairing for b in model.visual.transformer.resblocks)
        with torch.no_grad():
            out = model(video())
        assert out.points.shape == (2, 2, 3, 4)
        outputs[pairing] = out.align_losses
    assert not torch.allclose(outputs["adjacent"], outputs["first"])
    assert not torch.allclose(outputs["first"], outputs["middle"])


# ----------------------------------------------------------------------------------------------------- blocks

@pytest.mark.parametrize("spec, aligned", [("all", [0, 1, 2, 3]), ("last:2", [2, 3]), ("last:4", [0, 1, 2, 3]),
                                           ("every:2", [1, 3]), ("every:3", [2]), ("every:1", [0, 1, 2, 3])])
def test_align_blocks_builds_ist_blocks_only_where_asked(spec, aligned):
    model = ILAModel(tiny("ila", "model.vision_layers=4", f"model.align_blocks={spec}"))
    blocks = model.visual.transformer.resblocks
    assert [i for i, b in enumerate(blocks) if isinstance(b, ISTBlock)] == aligned
    assert all(type(b) is FrameBlock for i, b in enumerate(blocks) if i not in aligned)
    assert not any(n.startswith(f"visual.transformer.resblocks.{i}.") and group != "clip"
                   for n, group in parameter_group_map(model).items() for i in range(4) if i not in aligned)
    out = model(video())
    assert out.align_losses.shape == (4,) and all(out.align_losses[i] == 0 for i in range(4) if i not in aligned)
    assert model.has_alignment_maps is (len(aligned) == 4)


def test_align_blocks_applies_to_pool_too():
    blocks = ILAModel(tiny("pool", "model.vision_layers=3", "model.align_blocks=last:1")).visual.transformer.resblocks
    assert [type(b) for b in blocks] == [FrameBlock, FrameBlock, PoolBlock]


@pytest.mark.parametrize("override, message", [
    ("model.align_blocks=last:0", r"^model.align_blocks='last:0' is not allowed; use all, last:K or every:K with K "
                                  r"in \[1, 2\] \(model.vision_layers\)$"),
    ("model.align_blocks=every:3", r"^model.align_blocks='every:3' is not allowed"),
    ("model.align_blocks=last:02", r"^model.align_blocks='last:02' is not allowed"),
    ("model.align_blocks=first:1", r"^model.align_blocks='first:1' is not allowed"),
    ("model.align_blocks=last", r"^model.align_blocks='last' is not allowed"),
    ("model.align_pairing=previous", r"model.align_pairing"),
])
def test_bad_ablation_options_are_refused_in_one_line(override, message):
    with pytest.raises(UserError, match=message) as info:
        tiny("ila", override)
    assert "\n" not in str(info.value)


def test_saved_configs_without_the_new_keys_take_the_defaults():
    assert "align_pairing" not in REQUIRED_MODEL_KEYS and "align_blocks" not in REQUIRED_MODEL_KEYS
    saved = tiny("ila").to_dict()
    del saved["align_pairing"], saved["align_blocks"]
    cfg = ModelConfig.from_dict(saved)
    assert (cfg.align_pairing, cfg.align_blocks) == ("adjacent", "all")
    defaults = ModelConfig()
    assert (defaults.align_pairing, defaults.align_blocks) == ("adjacent", "all")
