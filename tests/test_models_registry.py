"""The temporal-variant registry: a new variant is one module with one registration, and then the config, the
model, the CLI, the demo and the shareable-model card all know it; unregistered, it is refused again."""
import importlib
import sys

import pytest
import torch

import ila
from ila.cli import build_parser, main
from ila.config import config_keys, load_config
from ila.errors import UserError
from ila import from_pretrained
from ila.models.ila import ILAModel
from ila.models.registry import (create_blocks, register_temporal, temporal_variant, temporal_variants,
                                 unregister_temporal)

# the whole of a new variant: a module with its block and one registration (a TSM-style channel shift, named
# `tsm_demo`: ila's own `shift` variant, ila.models.shift, is built in)
SHIFT_MODULE = '''
"""`tsm_demo`: an eighth of every token's channels comes from the previous frame, then CLIP's block."""
import torch

from ila.models.clip import ResidualAttentionBlock
from ila.models.registry import register_temporal
from ila.models.temporal_block import TemporalBlock


class ShiftBlock(ResidualAttentionBlock, TemporalBlock):     # nothing of its own: every parameter is CLIP's
    def __init__(self, width: int, heads: int, frames: int, quick_gelu: bool = True):
        super().__init__(width, heads, quick_gelu)
        self.frames = frames

    def forward(self, x: torch.Tensor, queries: int | None = None):
        bt, length, width = x.shape
        clips = x.view(bt // self.frames, self.frames, length, width)
        k = width // 8
        moved = torch.cat([torch.zeros_like(clips[:, :1, :, :k]), clips[:, :-1, :, :k]], 1)
        x = torch.cat([moved, clips[..., k:]], -1).view(bt, length, width)
        return super().forward(x, queries), x.new_zeros(()), None


@register_temporal("tsm_demo", description="temporal-shift CLIP blocks ({num_frames} frames)", min_frames=3)
def shift_blocks(cfg, block_fn=ShiftBlock):
    return [block_fn(cfg.vision_width, cfg.vision_width // 64, cfg.num_frames, cfg.quick_gelu)
            for _ in range(cfg.vision_layers)]
'''

BUILTIN = ("ila", "mean", "attention", "joint", "shift", "pool")


@pytest.fixture
def shift(tmp_path, monkeypatch):
    """Import the one-module variant from a file of its own; unregister and forget it afterwards."""
    (tmp_path / "shift_variant.py").write_text(SHIFT_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("shift_variant")
    try:
        yield module
    finally:
        unregister_temporal("tsm_demo")
        sys.modules.pop("shift_variant", None)


def test_the_builtin_variants_are_registered_once_each():
    assert temporal_variants() == BUILTIN
    assert temporal_variants(references=False) == ("ila", "mean", "attention")   # joint: a cost reference
    assert temporal_variant("mean").min_frames == 1 and temporal_variant("ila").min_frames == 2
    keys = dict((k, kind) for k, kind, _ in config_keys())
    assert keys["model.temporal"] == "one of ila, mean, attention, joint, shift, pool"
    with pytest.raises(ValueError, match="'ila' is already registered"):
        register_temporal("ila", description="another")(lambda cfg: [])


def test_a_new_variant_is_one_module_and_one_registration(shift, capsys):
    assert temporal_variants() == (*BUILTIN, "tsm_demo")
    # the config accepts it and checks what the registration asks (three frames at least)
    cfg = load_config("tiny", ["model.temporal=tsm_demo", "data.num_frames=4"])
    assert cfg.model.temporal == "tsm_demo"
    assert dict((k, kind) for k, kind, _ in config_keys())["model.temporal"].endswith("shift, pool, tsm_demo")
    with pytest.raises(UserError, match=r"^model.num_frames=2: temporal modelling needs at least 3 frames$"):
        load_config("tiny", ["model.temporal=tsm_demo", "data.num_frames=2"])

    # the model builds its blocks and runs, forward and backward; the blocks see frame order
    torch.manual_seed(0)
    model = ILAModel(cfg.model)
    assert all(type(b) is shift.ShiftBlock for b in model.visual.transformer.resblocks)
    video = torch.randn(2, 4, 3, 32, 32)
    out = model(video)
    assert out.logits.shape == (2, 8) and out.points is None and torch.equal(out.align_losses, torch.zeros(2))
    out.logits.sum().backward()
    assert model.visual.transformer.resblocks[0].attn.in_proj_weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        frames, *_ = model.forward_features(video)
        reversed_frames, *_ = model.forward_features(video.flip(1))
    assert not torch.allclose(frames.flip(1), reversed_frames, atol=1e-4)   # a mean-only model would match

    # block_fn: another block class with the same arguments, passed in
    class Traced(shift.ShiftBlock):
        pass
    assert all(type(b) is Traced for b in create_blocks(cfg.model, block_fn=Traced))

    # the CLI offers it and `ila info` describes it
    info = next(a for a in build_parser()._subparsers._group_actions[0].choices["info"]._actions
                if a.dest == "temporal")
    assert tuple(info.choices) == (*BUILTIN, "tsm_demo")
    assert main(["info", "tiny", "--temporal", "tsm_demo"]) == 0
    assert capsys.readouterr().out.startswith("tiny: tsm_demo, 4 frames")
    # the demo takes it (and names it among the choices when given a wrong one)
    assert main(["demo", "--variants", "ila,nope", "--out", "/nonexistent/never-written"]) == 2
    assert "unknown variant(s) ['nope']; choose from ila, mean, attention, joint, shift, pool, tsm_demo" in capsys.readouterr().err


def test_a_shared_model_of_a_new_variant_loads_while_it_is_registered(shift, tmp_path):
    torch.manual_seed(0)
    cfg = load_config("tiny", ["model.temporal=tsm_demo"])
    model = ila.build_model(cfg.model).eval()
    folder = tmp_path / "tsm_demo-model"
    ila.save_pretrained(model, folder, [f"c{i}" for i in range(8)], config=cfg)
    assert "temporal-shift CLIP blocks (4 frames)" in (folder / "README.md").read_text()
    video = torch.randn(1, 4, 3, 32, 32)
    again = from_pretrained(folder)
    with torch.no_grad():
        assert torch.equal(again(video).logits, model(video).logits)
    unregister_temporal("tsm_demo")
    try:
        with pytest.raises(UserError, match=r'model.temporal must be one of ila, mean, attention, joint, shift, pool, got "tsm_demo"'):
            from_pretrained(folder)
    finally:
        importlib.reload(shift)                    # registered again for the fixture to remove


def test_an_unregistered_variant_is_refused_in_one_line(shift):
    unregister_temporal("tsm_demo")
    try:
        with pytest.raises(UserError) as info:
            load_config("tiny", ["model.temporal=tsm_demo"])
        assert str(info.value) == "model.temporal='tsm_demo' is not allowed; use one of ila, mean, attention, joint, shift, pool"
        with pytest.raises(UserError, match="model.temporal=3 is not allowed; use one of ila, mean"):
            load_config({"model": {"preset": "tiny", "temporal": 3}})
    finally:
        importlib.reload(shift)
