"""The training recipe on the training device, batched: loader workers only decode (uint8 clips), this module
does the rest where the model runs.

`DeviceAugment(size)(video, sizes, labels, generator)`: video uint8 (B, T, 3, H, W) (a padded batch of clips,
clip b filling `[:sizes[b, 0], :sizes[b, 1]]`) -> float (B, T, 3, S, S) normalised, labels (flipped classes
swapped). Per clip, in the order of `ila.data.transforms.TrainTransform`: short side to 256/224*S (a no-op
when the decoder already resized), multi-scale crop, resize to S x S, optional horizontal flip, colour jitter
(p 0.8, brightness / contrast 0.4, saturation 0.2, hue 0.1, in a random order), grayscale (p 0.2), normalisation,
random erasing (p 0.25, normal noise). Every frame of a clip gets the same parameters.

Parameters are drawn per clip by `draw_params` from the given `torch.Generator` (on the CPU, so a seeded
generator gives the same draws on any device), from the same distributions as `TrainTransform`'s torchvision
transforms. `apply_params` runs them batched: one resize per distinct crop size (at most 10), the colour
operations on the whole batch with per-clip factors (torchvision.transforms.v2.functional where it takes
per-clip factors; the blend and hue formulas of torchvision otherwise), masks for flip and grayscale. The
only loop over clips is the erasing paste (a slice per erased clip). Colour operations run in float (the CPU
path rounds to uint8 after each), so the two paths agree to about one grey level, not bit for bit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torchvision.transforms.v2 import functional as F

from ila.data.transforms import _CROP_POSITIONS, MEAN, SCALES, STD, resize_short_side
from torch.utils.data import default_collate
from torchvision.transforms.v2.functional._color import _hsv_to_rgb, _rgb_to_hsv

JITTER = dict(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)   # v2.ColorJitter(0.4, 0.4, 0.2, 0.1)
ERASE_SCALE, ERASE_RATIO = (0.02, 0.33), (0.3, 3.3)


@dataclass
class ClipParams:
    """The random choices for one clip. `crop` (top, left, height, width) is in the clip after its short
    side is resized (and flipped, when `flip`: the CPU path flips before it crops), as `MultiScaleCrop` gives it; `jitter_order` a permutation of (0
    brightness, 1 contrast, 2 saturation, 3 hue) or None (no jitter); `erase` (top, left, height, width) in
    the S x S output with `erase_value` float (3, h, w), or None."""

    crop: tuple[int, int, int, int]
    flip: bool = False
    jitter_order: tuple[int, ...] | None = None
    jitter: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 0.0)
    gray: bool = False
    erase: tuple[int, int, int, int] | None = None
    erase_value: torch.Tensor | None = None


def _uniform(lo: float, hi: float, g: torch.Generator) -> float:
    return float(torch.empty(1).uniform_(lo, hi, generator=g))


def _crop_params(height: int, width: int, scales, g: torch.Generator) -> tuple[int, int, int, int]:
    """`MultiScaleCrop.make_params` with an explicit generator."""
    base = min(height, width)
    sizes = [max(1, int(base * s)) for s in scales]
    pairs = [(w, h) for i, w in enumerate(sizes) for j, h in enumerate(sizes) if abs(i - j) <= 1]
    crop_w, crop_h = pairs[int(torch.randint(len(pairs), (), generator=g))]
    qx, qy = _CROP_POSITIONS[int(torch.randint(len(_CROP_POSITIONS), (), generator=g))]
    return (height - crop_h) // 4 * qy, (width - crop_w) // 4 * qx, crop_h, crop_w


def _erase_params(size: int, g: torch.Generator):
    """`v2.RandomErasing(value="random").make_params` on an S x S clip with an explicit generator: ten tries
    for a box of 2-33 % of the area with a log-uniform aspect ratio 0.3-3.3; none fits -> no erasing."""
    area, log_ratio = size * size, (math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1]))
    for _ in range(10):
        erase_area = area * _uniform(*ERASE_SCALE, g)
        aspect = math.exp(_uniform(*log_ratio, g))
        h, w = int(round(math.sqrt(erase_area * aspect))), int(round(math.sqrt(erase_area / aspect)))
        if not (h < size and w < size):
            continue
        value = torch.empty(3, h, w).normal_(generator=g)
        top = int(torch.randint(0, size - h + 1, (1,), generator=g))
        left = int(torch.randint(0, size - w + 1, (1,), generator=g))
        return (top, left, h, w), value
    return None, None


class DeviceAugment:
    """The training recipe of `TrainTransform` for a batch of uint8 clips on their device (see the module)."""

    def __init__(self, size: int, scales=SCALES, color_jitter: float = 0.8, grayscale: float = 0.2,
                 erasing: float = 0.25, hflip: bool = False, label_swap: dict[int, int] | None = None,
                 mean=MEAN, std=STD):
        self.size, self.short_side = size, resize_short_side(size)
        self.scales, self.color_jitter, self.grayscale, self.erasing = tuple(scales), color_jitter, grayscale, erasing
        self.hflip, self.label_swap = hflip, dict(label_swap or {})
        self.mean, self.std = mean, std

    def __repr__(self) -> str:
        return (f"DeviceAugment(size={self.size}, short_side={self.short_side}, scales={self.scales}, "
                f"color_jitter={self.color_jitter}, grayscale={self.grayscale}, erasing={self.erasing}, "
                f"hflip={self.hflip})")

    def resized(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) of a clip after its short side is resized to `short_side` (torchvision's rule)."""
        if min(height, width) == self.short_side:
            return height, width
        scale = self.short_side / min(height, width)
        if height <= width:
            return self.short_side, int(width * scale)
        return int(height * scale), self.short_side

    def draw_params(self, height: int, width: int, generator: torch.Generator) -> ClipParams:
        """One clip's parameters for an input of (height, width), in `TrainTransform`'s order."""
        g = generator
        crop = _crop_params(*self.resized(height, width), self.scales, g)
        flip = self.hflip and bool(torch.rand(1, generator=g) < 0.5)
        order, factors = None, (1.0, 1.0, 1.0, 0.0)
        if self.color_jitter > 0 and not float(torch.rand(1, generator=g)) >= self.color_jitter:
            order = tuple(int(i) for i in torch.randperm(4, generator=g))
            j = JITTER
            factors = (_uniform(1 - j["brightness"], 1 + j["brightness"], g),
                       _uniform(1 - j["contrast"], 1 + j["contrast"], g),
                       _uniform(1 - j["saturation"], 1 + j["saturation"], g), _uniform(-j["hue"], j["hue"], g))
        gray = self.grayscale > 0 and not float(torch.rand(1, generator=g)) >= self.grayscale
        erase = value = None
        if self.erasing > 0 and not float(torch.rand(1, generator=g)) >= self.erasing:
            erase, value = _erase_params(self.size, g)
        return ClipParams(crop, flip, order, factors, gray, erase, value)

    def __call__(self, video: torch.Tensor, sizes: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                 generator: torch.Generator | None = None):
        """(video float (B, T, 3, S, S), labels) for a uint8 batch (B, T, 3, H, W); `sizes` (B, 2) the clips'
        (height, width) inside the padded batch (default: all of it)."""
        if generator is None:
            generator = torch.Generator().manual_seed(int(torch.randint(2**62, ())))
        b, _, _, height, width = video.shape
        sizes = [(height, width)] * b if sizes is None else [tuple(int(v) for v in s) for s in sizes.tolist()]
        params = [self.draw_params(h, w, generator) for h, w in sizes]
        out = self.apply_params(video, sizes, params)
        if labels is not None and self.label_swap and any(p.flip for p in params):
            swapped = torch.tensor([self.label_swap.get(int(l), int(l)) for l in labels.tolist()], device=labels.device)
            flips = torch.tensor([p.flip for p in params], device=labels.device)
            labels = torch.where(flips, swapped.to(labels.dtype), labels)
        return out, labels

    def apply_params(self, video: torch.Tensor, sizes, params: list[ClipParams]) -> torch.Tensor:
        """The recipe with the given parameters: uint8 (B, T, 3, H, W) -> float (B, T, 3, S, S)."""
        b, t = video.shape[:2]
        size, device = self.size, video.device
        out = torch.empty(b, t, 3, size, size, device=device)
        groups: dict[tuple, list[int]] = {}
        for i, ((h, w), p) in enumerate(zip(sizes, params)):
            groups.setdefault((self.resized(h, w) != (h, w), p.crop[2], p.crop[3]), []).append(i)
        for (resize_first, crop_h, crop_w), members in groups.items():
            if resize_first:        # the decoder did not resize: short side first, clip by clip
                crops = []
                for i in members:
                    h, w = sizes[i]
                    clip = F.resize(video[i, :, :, :h, :w], list(self.resized(h, w)), antialias=True)
                    crops.append(self._crop(clip, params[i]))
                batch = torch.stack(crops)
            else:
                batch = torch.stack([self._crop(video[i, :, :, :sizes[i][0], :sizes[i][1]], params[i])
                                     for i in members])
            batch = F.resize(batch.flatten(0, 1).float(), [size, size], antialias=True)
            out[members] = batch.view(len(members), t, 3, size, size).clamp_(0, 255).div_(255)
        flips = [i for i, p in enumerate(params) if p.flip]
        if flips:
            out[flips] = out[flips].flip(-1)
        out = self._jitter(out, params)
        grays = [i for i, p in enumerate(params) if p.gray]
        if grays:
            out[grays] = F.rgb_to_grayscale(out[grays], num_output_channels=3)
        mean = torch.tensor(self.mean, device=device).view(3, 1, 1) / 255
        std = torch.tensor(self.std, device=device).view(3, 1, 1) / 255
        out = out.sub_(mean).div_(std)
        for i, p in enumerate(params):      # a slice per erased clip, the same noise through every frame
            if p.erase is not None:
                top, left, h, w = p.erase
                out[i, :, :, top:top + h, left:left + w] = p.erase_value.to(device)
        return out

    def _crop(self, clip: torch.Tensor, p: ClipParams) -> torch.Tensor:
        """The crop of (T, 3, h, w); a flipped clip takes the mirrored box (flipped again after resizing)."""
        top, left, h, w = p.crop
        if p.flip:
            left = clip.shape[-1] - left - w
        return clip[:, :, top:top + h, left:left + w]

    def _jitter(self, x: torch.Tensor, params: list[ClipParams]) -> torch.Tensor:
        """Colour jitter of float (B, T, 3, S, S) in [0, 1], each clip with its factors and order: at each of
        the four positions, every operation runs once on the clips that have it there."""
        active = [i for i, p in enumerate(params) if p.jitter_order is not None]
        if not active:
            return x
        factors = torch.tensor([params[i].jitter for i in range(len(params))], device=x.device)
        for position in range(4):
            for op in range(4):
                idx = [i for i in active if params[i].jitter_order[position] == op]
                if idx:
                    f = factors[idx, op].view(-1, 1, 1, 1, 1)
                    x[idx] = _COLOR_OPS[op](x[idx], f)
        return x


def _blend(a: torch.Tensor, b: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """torchvision's blend for float images: ratio * a + (1 - ratio) * b, clamped to [0, 1]."""
    return (ratio * a + (1.0 - ratio) * b).clamp_(0.0, 1.0)


def _brightness(x, f):
    return _blend(x, torch.zeros_like(x), f)


def _contrast(x, f):    # against the mean grey of each frame, as torchvision does for videos
    return _blend(x, F.rgb_to_grayscale(x).mean(dim=(-3, -2, -1), keepdim=True), f)


def _saturation(x, f):
    return _blend(x, F.rgb_to_grayscale(x), f)


def _hue(x, f):
    """torchvision's `adjust_hue` (HSV rotation) with a factor per clip."""
    hsv = _rgb_to_hsv(x)
    h, s, v = hsv.unbind(dim=-3)
    h = (h + f.squeeze(-3)).remainder_(1.0)
    return _hsv_to_rgb(torch.stack((h, s, v), dim=-3))


_COLOR_OPS = (_brightness, _contrast, _saturation, _hue)


class RawClip:
    """The loader-side 'transform' of the device path: a clip stays uint8 (T, 3, H, W), decoded at the
    recipe's short side (`short_side` tells the decoder)."""

    def __init__(self, size: int):
        self.size, self.short_side = size, resize_short_side(size)

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        return clip

    def __repr__(self) -> str:
        return f"RawClip(size={self.size}, short_side={self.short_side})"


def pad_collate(items: list[dict]) -> dict:
    """Collate items whose `video` is uint8 (T, 3, h, w) of differing sizes: `video` (B, T, 3, H, W) padded
    with zeros at the bottom / right, `size` (B, 2) each clip's (h, w); the other fields as torch collates."""
    videos = [item["video"] for item in items]
    height, width = max(v.shape[-2] for v in videos), max(v.shape[-1] for v in videos)
    batch = default_collate([{k: v for k, v in item.items() if k != "video"} for item in items])
    if all(v.shape[-2:] == (height, width) for v in videos):
        batch["video"] = torch.stack(videos)
    else:
        batch["video"] = torch.zeros(len(videos), *videos[0].shape[:-2], height, width, dtype=videos[0].dtype,
                                     device=videos[0].device)      # CPU, or the GPU (data.decoder=torchcodec-cuda)
        for i, v in enumerate(videos):
            batch["video"][i, ..., :v.shape[-2], :v.shape[-1]] = v
    batch["size"] = torch.tensor([v.shape[-2:] for v in videos], dtype=torch.int64)
    return batch
