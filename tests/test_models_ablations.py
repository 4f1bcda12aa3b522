"""The paper's ablations in miniature (Sec. 4.3.1, 4.3.4): the `shift` and `pool` variants, and ILA's
`model.align_pairing` / `model.align_blocks` options. (The registry-wide checks every variant passes, `shift`'s and
`pool`'s too, are tests/test_models_variants.py's; the release defaults' parity is tests/test_models_parity.py's.)"""
import json

import numpy as np
import pytest
import torch
from test_engine_train import tiny as tiny_run

from ila.config import REQUIRED_MODEL_KEYS, load_config
from ila.data.annotations import load_annotations
from ila.data.positions import positions_json, read_positions, view_centres
from ila.data.synthetic import make_dataset, render_clip, write_mp4
from ila.engine.checkpoint import save_checkpoint
from ila.engine.distributed import Env
from ila.engine.evaluate import evaluate_split, run_eval
from ila.engine.loaders import video_dataset
from ila.engine.predict import run_predict
from ila.engine.tracking import point_errors
from ila.errors import UserError
from ila.models import build_model
from ila.models.alignment import POINT_RANGE, ImplicitAlignment, merge_indexed, merge_pairs, pair_indices
from ila.models.config import ModelConfig
from ila.models.ila import ILAModel, parameter_group_map
from ila.models.ist_block import ISTBlock
from ila.models.pool import PoolBlock
from ila.models.shift import ShiftBlock, temporal_shift
from ila.models.temporal import FrameBlock


def tiny(temporal, *overrides):
    """The tiny preset's model config with `model.temporal` and overrides; with a data folder first, the whole
    run config of tests/test_engine_train.py's `tiny` on that generated set."""
    if not isinstance(temporal, str):
        return tiny_run(temporal, *overrides)
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


# ----------------------------------------------------------------------------------------------------- tracking

def test_point_error_by_hand():
    """4x4 grid of 8 px patches: cell k's centre is pixel 8k + 4, grid coordinate 2k/3 - 1."""
    points = torch.tensor([[[[-1.0, -1.0, 1.0, 1.0],            # pair (0, 1): prev at cell (0, 0), cur at (3, 3)
                             [-1.0, 1.0, 1 / 3, -1 / 3]]]])     # pair (0, 2): prev at (0, 3), cur at (2, 1)
    centres = torch.tensor([[[[4.0, 4.0], [4.0, 28.0], [float("nan"), float("nan")]]]])   # frame 2 invisible
    got = point_errors(points, centres, torch.tensor(pair_indices(3, "first")).T, patch=8, grid=4)
    # visible sides: (0,0)->(0,0): 0; (3,3)->(0,3): 3; (0,3)->(0,0): 3; frame 2 left out
    assert got["point_sides"] == 3 and got["point_error"] == pytest.approx(2.0)
    assert got["centre_point_error"] == pytest.approx(1.5 * 2 ** 0.5)    # every visible centre is a corner cell
    adjacent = point_errors(points, centres, torch.tensor(pair_indices(3, "adjacent")).T, patch=8, grid=4)
    # pairs (0, 1), (1, 2): (0,0)->(0,0): 0; (3,3)->(0,3): 3; frame 1's (0,3)->(0,3): 0; frame 2 left out
    assert adjacent["point_sides"] == 3 and adjacent["point_error"] == pytest.approx(1.0)


def test_view_centres_follow_the_test_sampling_resize_and_crop():
    centres = np.stack([np.arange(8.0), 10 + np.arange(8.0)], 1)          # frame f at (f, 10 + f), 32x32 video
    views = view_centres(centres, (32, 32), 4, 32, clips=2)             # short side 32 -> 36, centre crop at 2
    frames = np.array([[0, 2, 4, 6], [1, 3, 5, 7]])                     # 2 views of 4 segments of 2 frames
    np.testing.assert_allclose(views, np.stack([frames * 1.125 - 2, (10 + frames) * 1.125 - 2], -1))
    three = view_centres(centres, (48, 32), 4, 32, clips=1, crops=3)    # resized to 32 high, crops along x
    np.testing.assert_allclose(three[:, 0, 0], [1.0 - x for x in (0, 8, 16)])


def force_points(model, xy):
    """Every IST block's points at `xy` = (x_prev, y_prev, x_cur, y_cur): the last convolution of the point head
    at zero weight and a bias whose tanh gives them."""
    with torch.no_grad():
        for block in model.visual.transformer.resblocks:
            if isinstance(block, ISTBlock):
                last = block.alignment.point_head.temporal[2]
                last.weight.zero_()
                last.bias.copy_(torch.atanh(torch.tensor(xy) / POINT_RANGE))


@pytest.fixture(scope="module")
def flat(tmp_path_factory):
    """A flat generated set (no texture, no distractors, lossless) of 40 px videos: the object is the only
    thing that differs from the background."""
    root = tmp_path_factory.mktemp("flat")
    make_dataset(str(root), num_train=2, num_val=8, size=40, frames=8, distractors=0, texture=0.0, qp=0,
                 verbose=False)
    return root


def test_view_centres_are_where_the_object_is_in_the_views(tmp_path):
    """Discs moving left / right (and still ones) on a flat background, lossless: in the views the evaluation
    reads, the disc's pixels are centred on what `view_centres` gives (wherever the crop leaves it whole)."""
    labels = [0, 1, 0, 1, 6, 7]
    (tmp_path / "val").mkdir()
    centres = {}
    for i, label in enumerate(labels):
        clip, centres[f"val/{i}.mp4"] = render_clip(label, 40, 8, np.random.default_rng(i), distractors=0,
                                                    texture=0.0, object_size=(0.15, 0.15), shape="disc",
                                                    centres=True)
        write_mp4(str(tmp_path / f"val/{i}.mp4"), clip, qp=0)
    (tmp_path / "val.txt").write_text("".join(f"val/{i}.mp4 {label}\n" for i, label in enumerate(labels)))
    (tmp_path / "positions.json").write_text(positions_json(centres, (40, 40)))
    cfg = tiny(tmp_path, "unused", "data.num_frames=4", "model.num_frames=4")
    positions = read_positions(tmp_path / "positions.json")
    samples = load_annotations(str(tmp_path / "val.txt"), root=str(tmp_path))
    dataset = video_dataset(cfg, samples, train=False, clips=2)
    radius = 0.15 * 40 * 36 / 40                                        # in view pixels (40 px -> 36 px, crop 32)
    ys, xs = torch.meshgrid(torch.arange(32.0) + 0.5, torch.arange(32.0) + 0.5, indexing="ij")
    checked = 0
    for i, sample in enumerate(samples):
        views = dataset[i]["video"]                                     # (V, T, 3, 32, 32), normalised
        expected = view_centres(positions.centres(sample.path), positions.size, 4, 32, clips=2)
        away = (views - views[..., :1, :1]).abs().sum(2) > 0.5          # (V, T, 32, 32): not the background
        for v in range(2):
            for t in range(4):
                if not ((expected[v, t] > radius + 0.5) & (expected[v, t] < 32 - radius - 0.5)).all():
                    continue                                            # the crop cuts the disc
                weight = away[v, t].float()
                centroid = np.array([float((xs * weight).sum() / weight.sum()), float((ys * weight).sum() /
                                                                                     weight.sum())])
                # within 0.8 px: yuv420's half-resolution colour blurs an edge by up to a pixel; a frame off by one
                # would be 1.8 px or more away (motion 0.5 x 28 px over 7 steps, scaled by 0.9), a crop 2 px
                assert np.abs(centroid - expected[v, t]).max() < 0.8, (sample.path, v, t, centroid, expected[v, t])
                checked += 1
    assert checked >= 24


@pytest.mark.parametrize("pairing", ["adjacent", "first"])
def test_eval_reports_point_error_of_points_forced_to_a_known_place(flat, pairing, tmp_path):
    cfg = tiny(flat, tmp_path, "model.temporal=ila", f"model.align_pairing={pairing}", "eval.clips=2",
               "data.num_frames=4", "model.num_frames=4")
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    force_points(model, (-1 / 3, -1 / 3, 1 / 3, 1 / 3))                  # prev at cell (1, 1), cur at cell (2, 2)
    names = (flat / "classes.txt").read_text().splitlines()
    positions = read_positions(flat / "positions.json")
    metrics, _, scores, *_ = evaluate_split(model, cfg, Env(), names, progress=False, positions=positions)
    plain, _, plain_scores, *_ = evaluate_split(model, cfg, Env(), names, progress=False)
    torch.testing.assert_close(scores, plain_scores)                     # the same scores, from the same pass
    assert "point_error" not in plain
    prev, cur = pair_indices(4, pairing)
    moved, fixed = [], []
    for sample in load_annotations(str(flat / "val.txt"), root=str(flat)):
        cells = view_centres(positions.centres(sample.path), positions.size, 4, 32, clips=2) / 8 - 0.5
        for frames, at in ((prev, 1.0), (cur, 2.0)):
            side = cells[:, frames]                                      # (V, P, 2)
            keep = np.isfinite(side).all(-1)
            moved += list(np.linalg.norm(side - at, axis=-1)[keep])
            fixed += list(np.linalg.norm(side - 1.5, axis=-1)[keep])
    assert metrics["point_sides"] == len(moved) and metrics["point_videos"] == 8 and metrics["point_block"] == 1
    assert metrics["point_error"] == pytest.approx(np.mean(moved), abs=1e-5)
    assert metrics["centre_point_error"] == pytest.approx(np.mean(fixed), abs=1e-5)


def test_ila_eval_writes_point_error_for_a_set_with_positions_only(flat, tmp_path):
    cfg = tiny(flat, tmp_path, "model.temporal=ila", "data.num_frames=4", "model.num_frames=4")
    names = (flat / "classes.txt").read_text().splitlines()
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    path = save_checkpoint(tmp_path / "model.pt", model, cfg, names)
    metrics = run_eval(path, output=tmp_path / "eval")
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["point_error"] == pytest.approx(metrics["point_error"]) and saved["point_videos"] == 8
    # zero-initialised point heads: every point at the grid centre, so the two distances agree
    assert saved["point_error"] == pytest.approx(saved["centre_point_error"], abs=1e-4)
    pool_cfg = tiny(flat, tmp_path, "model.temporal=pool", "data.num_frames=4", "model.num_frames=4")
    pool_path = save_checkpoint(tmp_path / "pool.pt", build_model(pool_cfg.model), pool_cfg, names)
    assert "point_error" not in run_eval(pool_path, output=tmp_path / "eval-pool")   # no maps: nothing to measure
    (flat / "positions.json").rename(flat / "positions.bak")
    try:
        assert "point_error" not in run_eval(path, output=tmp_path / "eval-none", overwrite=True)
        (flat / "positions.json").write_text('{"cameras": [1, 2]}')     # a set's own file of another format
        assert "point_error" not in run_eval(path, output=tmp_path / "eval-other", overwrite=True)
        (flat / "positions.json").write_text('{"format": "ila-object-centres/1", "size": [40, 40], "videos": 3}')
        with pytest.raises(UserError, match="positions.json is not a positions file .videos must map"):
            run_eval(path, output=tmp_path / "eval-damaged", overwrite=True)
    finally:
        (flat / "positions.json").unlink(missing_ok=True)
        (flat / "positions.bak").rename(flat / "positions.json")


@pytest.mark.parametrize("text, message", [
    ('{"format": "other"}', "its format is not ila-object-centres/1"),
    ('{"format": "ila-object-centres/1", "size": [0, 4], "videos": {}}', "size must be"),
    ('{"format": "ila-object-centres/1", "size": [4, 4], "videos": {"a.mp4": [[1, "x"]]}}', "centres of 'a.mp4'"),
    ('{"format": "ila-object-centres/1", "size": [4, 4], "videos": {"a.mp4": []}}', "centres of 'a.mp4'"),
    ("[1, 2", "positions.json"),
])
def test_a_damaged_positions_file_is_refused_in_one_line(tmp_path, text, message):
    (tmp_path / "positions.json").write_text(text)
    with pytest.raises(UserError, match=message) as info:
        read_positions(tmp_path / "positions.json")
    assert "\n" not in str(info.value)


def test_pictures_of_a_model_aligning_in_its_last_block_only(flat, tmp_path):
    cfg = tiny(flat, tmp_path, "model.temporal=ila", "model.align_blocks=last:1", "model.align_pairing=first",
               "data.num_frames=4", "model.num_frames=4")
    names = (flat / "classes.txt").read_text().splitlines()
    path = save_checkpoint(tmp_path / "half.pt", build_model(cfg.model), cfg, names)
    video = str(flat / "val" / "000000.mp4")
    run_predict(path, [video], visualize=str(tmp_path / "points") + "/")
    assert (tmp_path / "points" / "000000.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(UserError, match=r"^--block 0: block 0 does not align frames \(model.align_blocks=last:1\); "
                                        r"choose one of 1$"):
        run_predict(path, [video], visualize=str(tmp_path / "points0") + "/", block=0)
