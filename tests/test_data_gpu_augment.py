"""The device-side training recipe (`ila.data.gpu_augment`) against the CPU recipe (`TrainTransform`): the same
output for the same parameters, the same parameter distributions, padded collation."""
import math
from collections import Counter

import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from ila.data.gpu_augment import ClipParams, DeviceAugment, RawClip, pad_collate
from ila.data.transforms import TrainTransform


def cpu_path(transform: TrainTransform, clip: torch.Tensor, p: ClipParams) -> torch.Tensor:
    """`TrainTransform` on one uint8 clip with the parameters `p` instead of its own draws (each torchvision
    transform's `transform(inpt, params)`), flipped first as `VideoDataset` does."""
    resize, crop, resize_to, jitter, gray, to_float, normalize, erase = transform.pipeline.transforms
    v = tv_tensors.Video(clip.flip(-1) if p.flip else clip)
    v = resize(v)
    top, left, h, w = p.crop
    v = crop.transform(v, dict(top=top, left=left, height=h, width=w))
    v = resize_to(v)
    if p.jitter_order is not None:
        b, c, s, hue = p.jitter
        v = jitter.transforms[0].transform(v, dict(fn_idx=torch.tensor(p.jitter_order), brightness_factor=b,
                                                   contrast_factor=c, saturation_factor=s, hue_factor=hue))
    if p.gray:
        v = gray.transform(v, gray.make_params([v]))
    v = normalize(to_float(v))
    if p.erase is not None:
        i, j, h, w = p.erase
        v = erase.transform(v, dict(i=i, j=j, h=h, w=w, v=p.erase_value))
    return v.as_subclass(torch.Tensor)


def textured_clip(t, h, w, seed):
    """Smooth colour gradients with blocks and noise: every colour operation changes it, interpolation is tame."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    base = torch.stack([x, y, (x + y) / 2]) * 200 + 20
    frames = base.expand(t, 3, h, w) + torch.randint(-15, 16, (t, 3, h, w), generator=g)
    frames[:, :, h // 4: h // 2, w // 3: w // 2] = torch.tensor([230.0, 40.0, 90.0]).view(3, 1, 1)
    return frames.clamp(0, 255).to(torch.uint8)


@pytest.mark.parametrize("flip", [False, True])
def test_device_path_equals_the_cpu_path_for_the_same_parameters(flip):
    size = 32
    aug = DeviceAugment(size, hflip=flip)
    ref = TrainTransform(size)
    shapes = [(36, 48), (36, 60), (50, 36), (36, 36)]        # short side already 36 (decoded), and one to resize
    clips = [textured_clip(3, h, w, seed=k) for k, (h, w) in enumerate(shapes)]
    g = torch.Generator().manual_seed(5)
    checked = Counter()
    for trial in range(12):
        params = [aug.draw_params(h, w, g) for h, w in shapes]
        params[0].jitter_order, params[0].jitter = (3, 2, 1, 0), (1.3, 0.7, 1.35, 0.08)   # all present at least once
        params[1].gray, params[2].erase = True, None
        height, width = max(h for h, _ in shapes), max(w for _, w in shapes)
        batch = torch.zeros(len(clips), 3, 3, height, width, dtype=torch.uint8)
        for i, c in enumerate(clips):
            batch[i, :, :, :c.shape[-2], :c.shape[-1]] = c
        got = aug.apply_params(batch, shapes, params)
        for i, (c, p) in enumerate(zip(clips, params)):
            want = cpu_path(ref, c, p)
            assert got[i].shape == want.shape == (3, 3, size, size)
            diff = (got[i] - want).abs() * 57.4               # in grey levels (std ~57 on the 0-255 scale)
            # resizing: both round, so within a level; each colour operation: float here, truncated to uint8
            # there (uint8 blend, hue and grey round down), about half a level more per operation
            ops = (0 if p.jitter_order is None else 4) + p.gray
            assert diff.mean() < 0.4 + 0.45 * ops, (trial, i, p)
            assert torch.quantile(diff.flatten(), 0.999) < 1.5 + 1.5 * ops, (trial, i, p)   # a bright factor last scales it up
            checked.update(k for k, on in (("flip", p.flip), ("jitter", p.jitter_order), ("gray", p.gray),
                                           ("erase", p.erase is not None)) if on)
    assert checked["jitter"] and checked["gray"] and checked["erase"] and (checked["flip"] > 0) == flip


def cpu_draws(ref: TrainTransform, n: int, h: int, w: int):
    """n parameter sets drawn by `TrainTransform`'s own transforms, in its order (global torch generator)."""
    resize, crop, _, jitter, gray, _, _, erase = ref.pipeline.transforms
    torch.manual_seed(0)
    video = tv_tensors.Video(torch.zeros(1, 3, h, w, dtype=torch.uint8))
    rh, rw = resize(video).shape[-2:]
    out_video = tv_tensors.Video(torch.zeros(1, 3, ref.size, ref.size))
    draws = []
    for _ in range(n):
        c = crop.make_params([tv_tensors.Video(torch.zeros(1, 3, rh, rw))])
        j = jitter.transforms[0].make_params([out_video]) if not torch.rand(1) >= jitter.p else None
        g = not torch.rand(1) >= gray.p
        e = None
        if not torch.rand(1) >= erase.p:
            ep = erase.make_params([out_video])
            e = None if ep["v"] is None else (ep["i"], ep["j"], ep["h"], ep["w"])
        draws.append(dict(crop=(c["top"], c["left"], c["height"], c["width"]),
                          order=None if j is None else tuple(j["fn_idx"].tolist()),
                          factors=None if j is None else (j["brightness_factor"], j["contrast_factor"],
                                                          j["saturation_factor"], j["hue_factor"]),
                          gray=g, erase=e))
    return draws


def device_draws(aug: DeviceAugment, n: int, h: int, w: int):
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        p = aug.draw_params(h, w, g)
        out.append(dict(crop=p.crop, order=p.jitter_order, factors=None if p.jitter_order is None else p.jitter,
                        gray=p.gray, erase=p.erase))
    return out


def test_parameters_follow_the_cpu_recipe_distributions():
    n, h, w, size = 4000, 240, 320, 224
    a, b = cpu_draws(TrainTransform(size), n, h, w), device_draws(DeviceAugment(size), n, h, w)

    def freq(draws, key):
        c = Counter(key(d) for d in draws)
        return {k: v / n for k, v in c.items()}

    def close_freqs(key, _):
        # every outcome's frequency within 5 standard errors of the other path's (seeded: no flakes)
        fa, fb = freq(a, key), freq(b, key)
        assert set(fa) == set(fb), key
        z = {k: abs(fa[k] - fb[k]) / math.sqrt(2 * max(fa[k] * (1 - fa[k]), 1e-4) / n) for k in fa}
        assert max(z.values()) < 5, (max(z.values()), fa, fb)

    close_freqs(lambda d: d["crop"][2:], 0.02)                   # 10 (height, width) pairs
    close_freqs(lambda d: d["crop"], 0.012)                      # with their 13 positions
    close_freqs(lambda d: d["order"] is not None, 0.02)          # p 0.8
    close_freqs(lambda d: d["order"], 0.012)                     # 24 orders, uniform
    close_freqs(lambda d: d["gray"], 0.02)                       # p 0.2
    close_freqs(lambda d: d["erase"] is not None, 0.02)          # p 0.25 x boxes that fit

    def stats(draws, fn):
        values = np.array([fn(d) for d in draws if fn(d) is not None], dtype=float)
        return values.mean(), values.std(), values.min(), values.max()

    for k, (lo, hi) in enumerate([(0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1)]):
        fn = lambda d, k=k: None if d["factors"] is None else d["factors"][k]  # noqa: E731
        ma, sa, mina, maxa = stats(a, fn)
        mb, sb, minb, maxb = stats(b, fn)
        width = hi - lo
        assert abs(ma - mb) < 0.02 * width and abs(sa - sb) < 0.02 * width, k
        assert lo <= min(mina, minb) and max(maxa, maxb) <= hi and maxb - minb > 0.98 * width, k
    for fn in (lambda d: None if d["erase"] is None else d["erase"][2] * d["erase"][3] / size**2,
               lambda d: None if d["erase"] is None else math.log(d["erase"][2] / d["erase"][3]),
               lambda d: None if d["erase"] is None else d["erase"][0] + d["erase"][2] / 2):
        ma, sa, *_ = stats(a, fn)
        mb, sb, *_ = stats(b, fn)
        assert abs(ma - mb) < 0.08 * sa and abs(sa - sb) < 0.08 * sa


def test_one_call_is_clip_consistent_and_repeatable():
    aug = DeviceAugment(32, erasing=1.0)
    video = textured_clip(1, 36, 48, seed=3).expand(4, 1, 3, 36, 48).reshape(1, 4, 3, 36, 48)
    video = torch.cat([video, video.flip(-1)])                  # (2, 4, 3, 36, 48): 4 equal frames per clip
    out, _ = aug(video, generator=torch.Generator().manual_seed(7))
    assert out.shape == (2, 4, 3, 32, 32) and out.dtype == torch.float32
    assert torch.equal(out[:, :1].expand_as(out), out)         # the same crop, colours and box on every frame
    again, _ = aug(video, generator=torch.Generator().manual_seed(7))
    assert torch.equal(out, again)
    other, _ = aug(video, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(out, other)


def test_flip_swaps_labels_of_flipped_clips_only():
    aug = DeviceAugment(16, hflip=True, label_swap={0: 1, 1: 0})
    video = torch.zeros(64, 1, 3, 20, 20, dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 3] * 16)
    g = torch.Generator().manual_seed(0)
    params_g = torch.Generator().manual_seed(0)
    flips = [aug.draw_params(20, 20, params_g).flip for _ in range(64)]
    _, got = aug(video, labels=labels, generator=g)
    want = [({0: 1, 1: 0}.get(int(l), int(l)) if f else int(l)) for l, f in zip(labels, flips)]
    assert got.tolist() == want and 10 < sum(flips) < 54


def test_pad_collate_keeps_each_clip_and_its_size():
    items = [dict(video=torch.full((2, 3, 4, 6), k + 1, dtype=torch.uint8), label=k, skipped_files="")
             for k in range(2)]
    items.append(dict(video=torch.full((2, 3, 6, 4), 9, dtype=torch.uint8), label=2, skipped_files=""))
    batch = pad_collate(items)
    assert batch["video"].shape == (3, 2, 3, 6, 6) and batch["size"].tolist() == [[4, 6], [4, 6], [6, 4]]
    assert batch["video"][0, ..., :4, :].eq(1).all() and batch["video"][0, ..., 4:, :].eq(0).all()
    assert batch["video"][2, ..., :, :4].eq(9).all() and batch["label"].tolist() == [0, 1, 2]
    assert RawClip(224).short_side == 256


def test_cpu_recipe_greys_videos():
    # torchvision's RandomGrayscale passes videos through unchanged; the recipe's own one does not
    clip = textured_clip(2, 20, 20, seed=0)
    out = TrainTransform(16, color_jitter=0, grayscale=1.0, erasing=0)(clip)
    rgb = out * torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1) + torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
    assert (rgb[:, 0] - rgb[:, 1]).abs().max() < 1e-3 and (rgb[:, 0] - rgb[:, 2]).abs().max() < 1e-3
    assert (clip[:, 0].float() - clip[:, 1].float()).abs().max() > 10
