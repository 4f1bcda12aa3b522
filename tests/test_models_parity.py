"""Parity: `ila` computes what the authors' release computes.

1. Against the authors' golden outputs (`ILA_PARITY_FIXTURES`, default ../shared/fixtures/official).
2. Against `reference_release.py` (a literal re-implementation of the release, itself checked against the
   golden outputs in 1.) on geometries the fixtures do not cover.
Error measure: max |ours - theirs| / max |theirs| per output, float32 CPU.
"""
import glob
import os

import pytest
import torch

from ila.models.config import ModelConfig
from ila.models.fuse import FUSIONS
from ila.models.ila import ILAModel
from ila import load_release
from ila.models.release import ila_to_release
from reference_release import reference_forward
from conftest import FIXTURES

TOL = 1e-5
# the one forward in train and eval mode; the fused inference model (ila.fuse), with all rewrites and with each alone
MODES = ["train", "eval", "fused"] + [f"fused-only-{name}" for name in FUSIONS]


def rel_err(ours, theirs):
    return ((ours - theirs).abs().max() / theirs.abs().max().clamp_min(1e-12)).item()


def set_mode(model, train):
    model.train(train)
    for m in model.modules():  # the fixtures' train mode has dropout disabled
        if isinstance(m, torch.nn.Dropout):
            m.eval()
    return model


def run(model, video, text, mode, delta=0.2):
    """The model's outputs in `mode` (one of MODES); a fused mode fuses the model (in place)."""
    train = mode == "train"
    if mode.startswith("fused"):
        only = mode.removeprefix("fused-only-")
        model.fuse(ablation=[n for n in FUSIONS if n != only] if only != mode else ())
    else:
        set_mode(model, train)
    model.align_delta = delta
    with torch.no_grad():
        out = model(video, text if model.text is not None else None)
    raw = out.points.permute(0, 1, 3, 2) / 0.75  # (layers, B, 4, T-1) before the release's 0.75 scaling
    return out, raw


def fixture_files():
    return sorted(glob.glob(os.path.join(FIXTURES, "*.pt")))


@pytest.mark.parametrize("path", fixture_files() or [pytest.param(None, marks=pytest.mark.skip("no fixtures"))],
                         ids=lambda p: os.path.basename(p) if p else "none")
@pytest.mark.parametrize("mode", MODES)
def test_golden_outputs(path, mode):
    fx = torch.load(path, weights_only=True)
    model = load_release(fx["state_dict"])
    assert model.cfg.num_frames == fx["config"]["frames"]
    out, raw = run(model, fx["video"], fx["text"], mode)
    expected = fx["train" if mode == "train" else "eval"]
    assert rel_err(out.logits, expected["logits"]) <= TOL
    assert rel_err(out.align_losses, expected["cos_losses"]) <= TOL
    assert rel_err(raw, expected["raw_points"]) <= TOL
    assert rel_err(out.video_features, expected["video_features"]) <= TOL


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_release_container_loads_to_the_same_outputs(fixtures_dir, mode):
    fx = torch.load(os.path.join(fixtures_dir, "k400_tiny.pt"), weights_only=True)
    model = load_release(os.path.join(fixtures_dir, "k400_tiny_release.pth"))
    out, _ = run(model, fx["video"], fx["text"], mode)
    assert rel_err(out.logits, fx[mode]["logits"]) <= TOL


def test_reference_matches_golden_outputs(fixtures_dir):
    for name in ("k400_tiny.pt", "ssv2_tiny.pt"):
        fx = torch.load(os.path.join(fixtures_dir, name), weights_only=True)
        for mode in ("eval", "train"):
            with torch.no_grad():
                logits, losses, raw, _ = reference_forward(fx["state_dict"], fx["video"], fx["text"], mode == "train")
            assert rel_err(logits, fx[mode]["logits"]) <= TOL
            assert rel_err(losses, fx[mode]["cos_losses"]) <= TOL
            assert rel_err(raw, fx[mode]["raw_points"]) <= TOL


def randomize(model):
    """Every parameter and buffer random, zero-initialised layers and BatchNorm statistics included."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith("num_batches_tracked"):
                continue
            elif name.endswith("logit_scale"):
                t.fill_(2.0)
            elif t.ndim >= 2:  # weights at about unit gain, so that signals neither vanish nor saturate
                t.copy_(torch.randn(t.shape, generator=g) * t[0].numel() ** -0.5)
            elif t.is_floating_point():
                base = 1.0 if name.endswith("weight") and t.ndim == 1 else 0.0
                t.copy_(base + 0.2 * torch.randn(t.shape, generator=g))
    return model


GEOMETRIES = [  # grid, width, depth, frames, head
    dict(image_resolution=56, vision_patch_size=8, vision_width=64, vision_layers=3, num_frames=3, head="text"),
    dict(image_resolution=35, vision_patch_size=7, vision_width=128, vision_layers=1, num_frames=5,
         head="classifier", interactive_block="dense", num_classes=7),
    dict(image_resolution=48, vision_patch_size=8, vision_width=192, vision_layers=2, num_frames=2, head="text",
         mit_layers=2, prompts_layers=1),
]


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=["7x7-w64-d3-T3", "5x5-w128-T5-ssv2", "6x6-w192-T2"])
@pytest.mark.parametrize("mode", MODES)
def test_other_geometries_match_the_reference(geometry, mode):
    cfg = ModelConfig(embed_dim=64, transformer_width=64, transformer_layers=1, align_hidden=32, point_hidden=16,
                      **geometry)
    release_sd = ila_to_release(randomize(ILAModel(cfg)).state_dict(), cfg.interactive_block)
    model = load_release(release_sd)  # the round trip through release key names is part of the test
    torch.manual_seed(0)
    video = torch.randn(2, cfg.num_frames, 3, cfg.image_resolution, cfg.image_resolution)
    text = torch.randint(1, 400, (3, 77))
    text[:, 6] = 49407
    out, raw = run(model, video, text, mode)
    with torch.no_grad():
        logits, losses, ref_raw, _ = reference_forward(release_sd, video, text, mode == "train")
    assert ref_raw.abs().max() > 0.05  # points really moved: the comparison covers the masks
    assert logits.std() > 0.1 and losses.min() > 0.01  # outputs are not degenerate
    assert rel_err(out.logits, logits) <= TOL
    assert rel_err(out.align_losses, losses) <= TOL
    assert rel_err(raw, ref_raw) <= TOL
