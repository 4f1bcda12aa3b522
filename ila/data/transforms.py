"""Clip transforms on `torchvision.transforms.v2` and mixup / cutmix targets.

A clip is a uint8 tensor (T, 3, H, W); every random transform draws its parameters once per call, so
all frames of a clip get the same crop, colour change and erased box. Pixels are normalised on the
0-255 scale with the CLIP mean and std.

- `TrainTransform`: the release's recipe (short side 256/224*S, multi-scale crop, resize to S, colour
  jitter p 0.8, grayscale p 0.2, normalise, random erasing p 0.25), optional RandAugment.
- `TestTransform`: centre crop (short side 256/224*S) or three crops (short side S) along the long side.
- `MixupCutmix`: batch-level mixup or cutmix with label smoothing, the same box/lambda for all frames.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
SCALES = (1.0, 0.875, 0.75, 0.66)

# crop positions of `MultiScaleCrop`, in quarters of the free space (x, y): corners, centre, edge
# midpoints and the four points between centre and corners
_CROP_POSITIONS = ((0, 0), (4, 0), (0, 4), (4, 4), (2, 2),
                   (0, 2), (4, 2), (2, 4), (2, 0), (1, 1), (3, 1), (1, 3), (3, 3))


def resize_short_side(size: int) -> int:
    """The short side the training recipe (and the centre-crop test) resizes to: 256/224 of the input."""
    return int(256 / 224 * size)


class MultiScaleCrop(v2.Transform):
    """Crop a width and a height each chosen from `scales` x the short side (their scale indices at
    most `max_scale_gap` apart), at one of 13 fixed positions (corners, centre, edges, between)."""

    def __init__(self, scales=SCALES, max_scale_gap: int = 1):
        super().__init__()
        self.scales = tuple(scales)
        self.max_scale_gap = max_scale_gap

    def make_params(self, flat_inputs):
        height, width = v2.query_size(flat_inputs)
        base = min(height, width)
        sizes = [max(1, int(base * s)) for s in self.scales]
        pairs = [(w, h) for i, w in enumerate(sizes) for j, h in enumerate(sizes)
                 if abs(i - j) <= self.max_scale_gap]
        crop_w, crop_h = pairs[int(torch.randint(len(pairs), ()))]
        qx, qy = _CROP_POSITIONS[int(torch.randint(len(_CROP_POSITIONS), ()))]
        left = (width - crop_w) // 4 * qx
        top = (height - crop_h) // 4 * qy
        return dict(top=top, left=left, height=crop_h, width=crop_w)

    def transform(self, inpt, params):
        return self._call_kernel(F.crop, inpt, **params)


class RandomGrayscale(v2.RandomGrayscale):
    """`v2.RandomGrayscale` that turns videos grey too: torchvision registers its grayscale kernel for images
    and plain tensors only, so `v2.RandomGrayscale` passes a `tv_tensors.Video` through unchanged."""

    def transform(self, inpt, params):
        if isinstance(inpt, tv_tensors.Video):
            grey = F.rgb_to_grayscale(inpt.as_subclass(torch.Tensor), num_output_channels=params["num_input_channels"])
            return tv_tensors.wrap(grey, like=inpt)
        return super().transform(inpt, params)


class TrainTransform:
    """The training recipe for one clip: uint8 (T, 3, H, W) -> float (T, 3, S, S)."""

    def __init__(self, size: int, scales=SCALES, color_jitter: float = 0.8, grayscale: float = 0.2,
                 erasing: float = 0.25, randaugment: bool = False, mean=MEAN, std=STD):
        self.size = size
        self.short_side = resize_short_side(size)
        steps = [v2.Resize(self.short_side, antialias=True), MultiScaleCrop(scales),
                 v2.Resize((size, size), antialias=True)]
        if randaugment:
            steps.append(v2.RandAugment(num_ops=2, magnitude=9))
        if color_jitter > 0:
            steps.append(v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=color_jitter))
        if grayscale > 0:
            steps.append(RandomGrayscale(p=grayscale))
        steps += [v2.ToDtype(torch.float32, scale=False), v2.Normalize(mean, std)]
        if erasing > 0:
            steps.append(v2.RandomErasing(p=erasing, value="random"))
        self.pipeline = v2.Compose(steps)

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        return self.pipeline(tv_tensors.Video(clip)).as_subclass(torch.Tensor)

    def __repr__(self) -> str:
        return f"TrainTransform({self.pipeline})"


class CropTransform:
    """A light training recipe for small from-scratch models: one random `size` crop of the clip resized to
    the short side 256/224*S (the test transform's resize), no scaling or colour changes, normalised:
    uint8 (T, 3, H, W) -> float (T, 3, S, S)."""

    def __init__(self, size: int, mean=MEAN, std=STD):
        self.size = size
        self.short_side = resize_short_side(size)
        self.pipeline = v2.Compose([v2.Resize(self.short_side, antialias=True), v2.RandomCrop(size),
                                    v2.ToDtype(torch.float32, scale=False), v2.Normalize(mean, std)])

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        return self.pipeline(tv_tensors.Video(clip)).as_subclass(torch.Tensor)

    def __repr__(self) -> str:
        return f"CropTransform(size={self.size}, short_side={self.short_side})"


class TestTransform:
    """The test recipe for one clip: uint8 (T, 3, H, W) -> float (crops, T, 3, S, S); one crop is the
    centre after resizing the short side to 256/224*S, three crops are start / centre / end along the
    long side after resizing the short side to S."""

    __test__ = False  # not a pytest class despite its name

    def __init__(self, size: int, crops: int = 1, mean=MEAN, std=STD):
        if crops not in (1, 3):
            raise ValueError(f"test crops must be 1 or 3, got {crops}")
        self.size, self.crops = size, crops
        self.short_side = resize_short_side(size) if crops == 1 else size
        self.resize = v2.Resize(self.short_side, antialias=True)
        self.normalize = v2.Compose([v2.ToDtype(torch.float32, scale=False), v2.Normalize(mean, std)])

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        clip = self.resize(tv_tensors.Video(clip))
        height, width = clip.shape[-2:]
        size = self.size
        if self.crops == 1:
            views = [F.center_crop(clip, [size, size])]
        else:
            if width >= height:
                boxes = [(0, x) for x in (0, (width - size) // 2, width - size)]
            else:
                boxes = [(y, 0) for y in (0, (height - size) // 2, height - size)]
            views = [F.crop(clip, top, left, size, size) for top, left in boxes]
        return torch.stack([self.normalize(v).as_subclass(torch.Tensor) for v in views])

    def __repr__(self) -> str:
        return f"TestTransform(size={self.size}, crops={self.crops}, short_side={self.short_side})"


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """One-hot targets with `smoothing` spread evenly over all classes."""
    off = smoothing / num_classes
    targets = torch.full((labels.shape[0], num_classes), off, device=labels.device)
    return targets.scatter_(1, labels.long().view(-1, 1), 1.0 - smoothing + off)


class MixupCutmix:
    """Mix a batch with its reverse: `(video (B, T, 3, H, W), labels (B,)) -> (video, soft targets (B, C))`.

    With probability `prob` the batch is mixed; cutmix is chosen with `switch_prob` when both alphas are
    positive. Mixup blends whole clips with lambda ~ Beta(mixup_alpha); cutmix pastes one box (area
    1 - lambda, lambda ~ Beta(cutmix_alpha)) through every frame, and lambda is corrected to the pasted
    area. Targets are label-smoothed one-hots mixed with the same lambda. Random draws come from
    torch's generator (the global one unless `generator` is given), so seeding torch repeats them.
    """

    def __init__(self, num_classes: int, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0,
                 switch_prob: float = 0.5, label_smoothing: float = 0.1, prob: float = 1.0):
        self.num_classes = num_classes
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.switch_prob, self.label_smoothing, self.prob = switch_prob, label_smoothing, prob

    def __call__(self, video: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None):
        targets = smooth_one_hot(labels, self.num_classes, self.label_smoothing)
        seed = int(torch.randint(2**62, (), generator=generator))
        rng = np.random.default_rng(seed)
        if (self.mixup_alpha <= 0 and self.cutmix_alpha <= 0) or rng.random() >= self.prob:
            return video, targets
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or rng.random() < self.switch_prob)
        partner = video.flip(0)
        if use_cutmix:
            lam = float(rng.beta(self.cutmix_alpha, self.cutmix_alpha))
            top, left, h, w = cutmix_box(video.shape[-2], video.shape[-1], lam, rng)
            video = video.clone()
            video[..., top:top + h, left:left + w] = partner[..., top:top + h, left:left + w]
            lam = 1.0 - h * w / (video.shape[-2] * video.shape[-1])
        else:
            lam = float(rng.beta(self.mixup_alpha, self.mixup_alpha))
            video = video * lam + partner * (1.0 - lam)
        return video, targets * lam + targets.flip(0) * (1.0 - lam)

    def __repr__(self) -> str:
        return (f"MixupCutmix(num_classes={self.num_classes}, mixup_alpha={self.mixup_alpha}, "
                f"cutmix_alpha={self.cutmix_alpha}, switch_prob={self.switch_prob}, "
                f"label_smoothing={self.label_smoothing}, prob={self.prob})")


def cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A box (top, left, h, w) of about (1 - lam) of the area, its centre uniform in the image and the
    part outside the image cut off."""
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return top, left, bottom - top, right - left
