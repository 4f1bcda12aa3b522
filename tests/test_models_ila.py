"""The ILA model: variants, shapes, gradients, the disturbance offset, baselines, freezing, optimizer groups."""
import pytest
import torch

from ila.models.config import ModelConfig
from ila.engine.optim import param_groups
from ila.models.ila import ILAModel, parameter_group_map
from ila.presets import PRESETS, get_preset
from ila.info import count_flops, count_parameters
from ila.errors import UserError


def tiny(**kw):
    cfg = get_preset("tiny")
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def with_moving_points(model):
    """Non-zero last point layer, so points leave the centre and gradients through the masks are non-trivial."""
    torch.manual_seed(3)
    with torch.no_grad():
        for block in model.visual.transformer.resblocks:
            layer = block.alignment.point_head.temporal[2]
            layer.weight.normal_(0, 0.5)
            for fc in (block.temporal_skip_align_fc, block.temporal_skip_fc):
                fc.weight.normal_(0, 0.05)
    return model


@pytest.mark.parametrize("head", ["text", "classifier"])
@pytest.mark.parametrize("frames", [2, 3, 4])
def test_shapes_for_any_frame_count(head, frames):
    model = ILAModel(tiny(head=head, num_frames=frames)).eval()
    video = torch.randn(2, frames, 3, 32, 32)
    text = torch.randint(0, 1000, (5, 77)) if head == "text" else None
    out = model(video, text)
    assert out.logits.shape == (2, 5 if head == "text" else 8)
    assert out.align_losses.shape == (2,)
    assert out.points.shape == (2, 2, frames - 1, 4)


def test_cached_text_features_give_the_same_logits():
    model = ILAModel(tiny(head="text")).eval()
    video, text = torch.randn(1, 4, 3, 32, 32), torch.randint(0, 1000, (3, 77))
    with torch.no_grad():
        assert torch.equal(model(video, text).logits, model(video, text_features=model.encode_text(text)).logits)


def test_train_mode_uses_nine_points_with_current_delta():
    model = with_moving_points(ILAModel(tiny()))
    video = torch.randn(2, 4, 3, 32, 32)
    model.train()
    with torch.no_grad():
        model.align_delta = 0.2
        wide = model(video).align_losses
        model.align_delta = 0.0
        single = model(video).align_losses
        model.eval()
        model.align_delta = 0.2
        eval_ = model(video).align_losses
    assert not torch.allclose(wide, single)  # the disturbance changes the masks in training
    model.train()
    with torch.no_grad():
        assert torch.allclose(model(video).align_losses, wide)
    assert eval_.shape == wide.shape


def test_delta_decay_follows_the_release_rule():
    model = ILAModel(tiny())
    deltas = [model.decay_align_delta(epoch) for epoch in range(33)]
    assert deltas[29] == 0.2 and deltas[30] == 0.1 and deltas[31] == 0.05 and deltas[32] == 0.025
    assert all(b.alignment.delta == 0.025 for b in model.visual.transformer.resblocks)


def test_paper_mi_token_variant():
    release = with_moving_points(ILAModel(tiny()))
    paper = ILAModel(tiny(mi_token="paper"))
    paper.load_state_dict(release.state_dict())
    video = torch.randn(2, 4, 3, 32, 32)
    out = paper(video)
    assert out.logits.shape == (2, 8)
    out.logits.sum().backward()  # no alignment loss: the gradient reaches the points only through the MI token
    grad = paper.visual.transformer.resblocks[0].alignment.point_head.spatial[0].weight.grad
    assert grad is not None and grad.abs().sum() > 0
    with torch.no_grad():
        assert not torch.allclose(out.logits, release(video).logits, atol=1e-4)


def test_gradients_reach_the_point_predictor_in_the_release_form():
    model = with_moving_points(ILAModel(tiny()))
    out = model(torch.randn(2, 4, 3, 32, 32))
    (out.logits.sum() + out.align_losses.sum()).backward()
    for block in model.visual.transformer.resblocks:
        assert block.alignment.point_head.spatial[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("temporal", ["mean", "attention", "joint"])
def test_baselines_share_backbone_and_head(temporal):
    ila = ILAModel(tiny())
    base = ILAModel(tiny(temporal=temporal))
    shared = {k for k in base.state_dict() if ".temporal_" not in k}
    assert shared <= set(ila.state_dict())  # same CLIP blocks and head, under the same names
    out = base(torch.randn(2, 4, 3, 32, 32))
    assert out.points is None and torch.equal(out.align_losses, torch.zeros(2))


def test_order_blind_head_makes_mean_ignore_frame_order():
    model = ILAModel(tiny(temporal="mean")).eval()
    video = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(video).logits, model(video.flip(1)).logits, atol=1e-5)
        ila = ILAModel(tiny()).eval()
        with_moving_points(ila)
        assert not torch.allclose(ila(video).logits, ila(video.flip(1)).logits, atol=1e-5)


def test_release_freezing_and_parameter_groups():
    cfg = tiny(head="text", freeze_clip=True)
    model = ILAModel(cfg)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    group_of = parameter_group_map(model)
    assert trainable == {n for n, g in group_of.items() if g in ("message", "temporal", "head")}
    assert "visual.conv1.weight" not in trainable and "logit_scale" not in trainable
    assert not any(n.startswith(("text.", "head.prompts.")) for n in trainable)
    groups = {g["name"]: g for g in param_groups(model, base_lr=8e-6, weight_decay=3e-3)}
    assert (groups["message"]["lr"], groups["message"]["weight_decay"]) == (5e-4, 1e-2)
    assert groups["temporal"]["lr"] == pytest.approx(8e-5, rel=1e-12) and groups["temporal"]["weight_decay"] == 1e-3
    assert (groups["head"]["lr"], groups["head"]["weight_decay"]) == (4e-4, 3e-3)
    assert all(g["weight_decay"] == 0 for n, g in groups.items() if n.endswith("_no_decay"))
    assert all(p.ndim <= 1 or "positional_embedding" in n
               for g in groups.values() if g["name"].endswith("_no_decay") for n, p in
               [(n, p) for n, p in model.named_parameters() if any(p is q for q in g["params"])])
    assert sum(len(g["params"]) for g in groups.values()) == len(trainable)
    model.set_trainable(full_finetune=True)
    assert all(p.requires_grad for p in model.parameters())
    uniform = param_groups(model, base_lr=1e-3, weight_decay=0.05, scheme="uniform")
    assert {g["lr"] for g in uniform} == {1e-3} and {g["weight_decay"] for g in uniform} == {0.0, 0.05}


def test_release_trainable_count_matches_the_paper_derivation():
    total, trainable = count_parameters(get_preset("ila-b32-8f-k400"))
    assert round(trainable / 1e6, 1) == 43.6  # paper.md 1.11: optimised total K400 B/32 = 43.6 M


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_builds_and_counts(name):
    cfg = get_preset(name)
    assert count_flops(cfg) > 0


def test_flops_grow_linearly_in_frames_for_ila():
    cfg8, cfg16 = get_preset("ila-b32-8f-k400"), get_preset("ila-b32-16f-k400")
    cfg8.num_classes = cfg16.num_classes = 3
    ratio = count_flops(cfg16) / count_flops(cfg8)
    assert 1.9 < ratio < 2.05


def test_bad_configs_are_user_errors():
    with pytest.raises(UserError, match="temporal"):
        ILAModel(tiny(temporal="lstm"))
    with pytest.raises(UserError, match="4x4"):
        ILAModel(tiny(image_resolution=24))
    with pytest.raises(ValueError, match="4 frames"):
        ILAModel(tiny())(torch.randn(1, 3, 3, 32, 32))


@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")
def test_training_gradients_match_the_reference():
    """The one forward's gradients are those of the literal release re-implementation (tests/reference_release.py)
    for every parameter downstream of the last alignment (the reference turns the points into Python floats, so no
    gradient flows through its masks): the last block, the image head and the video head, CLIP weights unfrozen."""
    from ila import load_release
    from ila.models.release import ila_to_release
    from reference_release import reference_forward

    torch.manual_seed(0)
    source = with_moving_points(ILAModel(tiny(head="text", mit_pos_embed=True)))
    release_sd = {k: v.detach().clone() for k, v in ila_to_release(source.state_dict(), "separable").items()}
    model = load_release(release_sd)
    model.set_trainable(full_finetune=True)
    model.train()
    model.align_delta = 0.2
    video = torch.randn(2, 4, 3, 32, 32)
    text = torch.randint(1, 400, (3, 77))
    text[:, 6] = 49407
    out = model(video, text)
    (out.logits.square().sum() + out.align_losses.sum()).backward()
    ref_sd = {k: v.requires_grad_() if v.is_floating_point() and "running_" not in k else v
              for k, v in release_sd.items()}
    logits, losses, _, _ = reference_forward(ref_sd, video, text, train=True, delta=0.2)
    (logits.square().sum() + losses.sum()).backward()
    last = f"visual.transformer.resblocks.{model.cfg.vision_layers - 1}."
    downstream = {n: p.grad for n, p in model.named_parameters() if n.startswith(("head.", "visual.ln_post", "visual.proj"))
                  or (n.startswith(last) and not n.startswith((last + "message_", last + "alignment.")))}
    ours = ila_to_release(downstream, "separable")
    assert len(ours) > 30 and all(g is not None for g in ours.values())
    for name, grad in ours.items():
        ref = ref_sd[name].grad
        assert ref is not None, name
        assert ((grad - ref).abs().max() / ref.abs().max().clamp_min(1e-8)).item() < 1e-4, name


def test_divided_attention_sees_frame_order_through_its_time_embedding():
    torch.manual_seed(0)
    model = ILAModel(tiny(temporal="attention")).eval()
    with torch.no_grad():
        for block in model.visual.transformer.resblocks:
            block.temporal_fc.weight.normal_(0, 0.2)
        video = torch.randn(2, 4, 3, 32, 32)
        assert not torch.allclose(model(video).logits, model(video.flip(1)).logits, atol=1e-5)
