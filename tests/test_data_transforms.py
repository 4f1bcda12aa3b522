"""Clip transforms (same random parameters for every frame) and mixup / cutmix targets."""
import pytest
import torch

from ila.data.transforms import (MEAN, STD, MixupCutmix, MultiScaleCrop, TestTransform, TrainTransform,
                                 resize_short_side, smooth_one_hot)


def still_clip(t=6, h=48, w=64, seed=0):
    """A clip whose frames are all the same random image."""
    frame = torch.randint(0, 256, (1, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    return frame.expand(t, -1, -1, -1).clone()


@pytest.mark.parametrize("randaugment", [False, True])
def test_train_transform_applies_the_same_parameters_to_every_frame(randaugment):
    transform = TrainTransform(32, randaugment=randaugment, erasing=1.0)
    outputs = []
    for seed in range(8):
        torch.manual_seed(seed)
        out = transform(still_clip(seed=seed))
        assert out.shape == (6, 3, 32, 32) and out.dtype == torch.float32
        assert torch.equal(out, out[:1].expand_as(out))            # identical input frames stay identical
        outputs.append(out)
    assert len({o.sum().item() for o in outputs}) == 8


def test_train_transform_is_repeatable_under_a_torch_seed():
    transform, clip = TrainTransform(32), still_clip()
    torch.manual_seed(3)
    a = transform(clip)
    torch.manual_seed(3)
    assert torch.equal(a, transform(clip))


def test_normalisation_on_0_255_pixels():
    transform = TrainTransform(16, color_jitter=0, grayscale=0, erasing=0)
    clip = torch.full((2, 3, 20, 30), 200, dtype=torch.uint8)
    out = transform(clip)
    expected = (200 - torch.tensor(MEAN)) / torch.tensor(STD)
    assert torch.allclose(out, expected.view(1, 3, 1, 1).expand_as(out), atol=1e-5)
    assert resize_short_side(224) == 256 and resize_short_side(32) == 36


def test_multi_scale_crop_sizes_and_positions():
    crop = MultiScaleCrop()
    h, w = 100, 200
    allowed = [int(100 * s) for s in (1, 0.875, 0.75, 0.66)]
    image = torch.arange(h * w, dtype=torch.float32).view(1, 1, h, w)
    torch.manual_seed(0)
    for _ in range(60):
        params = crop.make_params([image])
        i, j = allowed.index(params["width"]), allowed.index(params["height"])
        assert abs(i - j) <= 1
        step_x, step_y = (w - params["width"]) // 4, (h - params["height"]) // 4
        assert params["left"] % max(step_x, 1) == 0 and params["left"] // max(step_x, 1) <= 4
        assert params["top"] in [step_y * q for q in range(5)]
        out = crop.transform(image, params)
        assert out[0, 0, 0, 0] == params["top"] * w + params["left"]
        assert out.shape[-2:] == (params["height"], params["width"])


def test_centre_crop_test_transform():
    clip = torch.arange(56, dtype=torch.uint8).view(1, 1, 1, 56).expand(2, 3, 42, 56).contiguous()
    out = TestTransform(32, crops=1)(clip)
    assert out.shape == (1, 2, 3, 32, 32)
    # short side 42 -> 36, long side 56 -> 48; the centre crop keeps columns 8..39 of 48
    expected = TestTransform(32, crops=1).resize(clip)[..., 2:34, 8:40].float()
    assert torch.allclose(out[0], (expected - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1))


def test_three_crops_along_the_long_side():
    for h, w in ((40, 80), (80, 40)):
        clip = torch.randint(0, 256, (3, 3, h, w), dtype=torch.uint8)
        out = TestTransform(32, crops=3)(clip)
        assert out.shape == (3, 3, 3, 32, 32)
        resized = TestTransform(32, crops=3).resize(clip).float()       # short side 32, long side 64
        mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
        for k, offset in enumerate((0, 16, 32)):
            window = resized[..., :, offset:offset + 32] if w > h else resized[..., offset:offset + 32, :]
            assert torch.allclose(out[k], (window - mean) / std)
    with pytest.raises(ValueError):
        TestTransform(32, crops=2)


def test_smoothed_targets_without_mixing():
    mix = MixupCutmix(5, mixup_alpha=0, cutmix_alpha=0, label_smoothing=0.1)
    video = torch.randn(3, 2, 3, 8, 8)
    out, targets = mix(video, torch.tensor([0, 4, 2]))
    assert out is video
    expected = torch.full((3, 5), 0.02)
    expected[[0, 1, 2], [0, 4, 2]] = 0.92
    assert torch.allclose(targets, expected)
    assert torch.allclose(smooth_one_hot(torch.tensor([1]), 4), torch.tensor([[0.0, 1.0, 0.0, 0.0]]))


def test_mixup_blends_clips_and_targets_with_one_lambda():
    mix = MixupCutmix(4, mixup_alpha=0.8, cutmix_alpha=0, label_smoothing=0.0)
    video = torch.stack([torch.full((3, 3, 4, 4), float(v)) for v in (0, 10, 30)])
    labels = torch.tensor([0, 1, 2])
    torch.manual_seed(0)
    out, targets = mix(video, labels)
    lam = targets[0, 0].item()
    assert 0 < lam < 1
    assert torch.allclose(targets.sum(1), torch.ones(3))
    assert torch.allclose(out[0], torch.full_like(out[0], 30 * (1 - lam)), atol=1e-5)   # paired with the last
    assert torch.allclose(out[1], torch.full_like(out[1], 10.0))                         # the middle pairs with itself
    torch.manual_seed(0)
    again, _ = mix(video, labels)
    assert torch.equal(out, again)


def test_cutmix_pastes_one_box_through_all_frames():
    mix = MixupCutmix(3, mixup_alpha=0, cutmix_alpha=1.0, label_smoothing=0.0)
    video = torch.stack([torch.zeros(4, 3, 16, 16), torch.ones(4, 3, 16, 16)])
    labels = torch.tensor([0, 2])
    generator = torch.Generator().manual_seed(1)
    for _ in range(10):
        out, targets = mix(video, labels, generator=generator)
        pasted = out[0]                                       # ones where the box is
        assert torch.equal(pasted, pasted[:1, :1].expand_as(pasted))   # same box in every frame and channel
        area = pasted[0, 0].mean().item()
        assert targets[0].tolist() == pytest.approx([1 - area, 0, area])
        assert torch.equal(out[1], 1 - pasted)


def test_switch_between_mixup_and_cutmix():
    mix = MixupCutmix(2, switch_prob=0.5, label_smoothing=0.0)
    video = torch.stack([torch.zeros(2, 3, 8, 8), torch.ones(2, 3, 8, 8)])
    kinds = set()
    torch.manual_seed(0)
    for _ in range(20):
        out, _ = mix(video, torch.tensor([0, 1]))
        values = out[0].unique()
        kinds.add("cutmix" if set(values.tolist()) <= {0.0, 1.0} else "mixup")
    assert kinds == {"mixup", "cutmix"}
    never = MixupCutmix(2, prob=0.0)
    out, targets = never(video, torch.tensor([0, 1]))
    assert out is video and targets.argmax(1).tolist() == [0, 1]
