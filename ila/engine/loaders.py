"""From the config's `data` section to datasets and loaders (the engine's only door into `ila.data`)."""
from __future__ import annotations

import os

from torch.utils.data import Sampler

from ila.config import Config
from ila.data.annotations import read_annotations
from ila.data.cache import MemoryVideoDataset
from ila.data.dataset import VideoDataset, build_loader
from ila.data.decode_torchcodec import check_cuda_decoding
from ila.data.folders import split_holdout
from ila.data.gpu_augment import DeviceAugment, RawClip, pad_collate
from ila.data.transforms import CropTransform, TrainTransform
from ila.engine.classes import class_names_from
from ila.errors import UserError


def read_split(cfg: Config, split: str, class_names: list[str] | None = None):
    """(samples, class names) of `data.train_list` or `data.val_list` (an annotation file or a folder with one
    subfolder per class: `read_annotations` reads either, in `data.format`); names from `class_names`, the
    config's `data.class_names`, or the annotation itself, in that order."""
    holdout = cfg.data.val_split > 0 and (split == "train" or not cfg.data.val_list)   # a given val_list wins
    if holdout and not os.path.isdir(cfg.data.train_list):
        raise UserError(f"data.val_split={cfg.data.val_split} holds out part of a folder dataset: set data.train_list "
                        f"to a folder with one subfolder per class (or give data.val_list instead)")
    path = cfg.data.train_list if split == "train" or holdout else cfg.data.val_list
    if not path:
        raise UserError(f"data.{split}_list is empty; set it to the {split} annotation file or a folder with one "
                        f"subfolder per class (--set data.{split}_list=PATH)")
    names = class_names or class_names_from(cfg.data.class_names)
    ann = read_annotations(path, root=cfg.data.root, fmt=cfg.data.format, class_names=names)
    if holdout:
        ann.samples = split_holdout(ann.samples, cfg.data.val_split, path)[split == "val"]
    names = ann.class_names or names
    if not names:
        names = [str(i) for i in range(max(s.label for s in ann.samples) + 1)]
    return ann.samples, list(names)


def video_dataset(cfg: Config, samples, train: bool, clips: int = 1, crops: int = 1):
    """Training clips (random, per-epoch) or test views (clips x crops, deterministic) of the samples;
    `data.cache=memory` decodes every video once (`ila.data.cache`), `data.recipe=crop` trains on random crops."""
    policy = None if cfg.data.bad_files == "auto" else cfg.data.bad_files
    transform, kind = None, VideoDataset
    if train and cfg.data.decoder == "torchcodec-cuda" and (cfg.data.recipe == "crop" or cfg.data.augment != "device"):
        raise UserError("data.decoder=torchcodec-cuda leaves training clips on the GPU, where the release recipe runs "
                        "batched: set data.augment=device and data.recipe=release (or data.decoder=torchcodec to "
                        "decode on the CPU)")
    if cfg.data.decoder == "torchcodec-cuda":         # where it cannot run: one line, before any video is opened

        check_cuda_decoding()
    if train and cfg.data.recipe == "crop":
        if cfg.data.augment == "device":
            raise UserError("data.recipe=crop runs in the loader; set data.augment=cpu")

        transform = CropTransform(cfg.data.input_size)
    elif train and cfg.data.augment == "device":       # workers decode only; `device_augment` does the recipe

        transform = RawClip(cfg.data.input_size)
    elif train:
        transform = TrainTransform(cfg.data.input_size, grayscale=cfg.data.grayscale)
    extra = {}
    if cfg.data.cache == "memory":
        kind = MemoryVideoDataset
        extra["verbose"] = True
    return kind(samples, root="", num_frames=cfg.data.num_frames, input_size=cfg.data.input_size, train=train,
                sampling=cfg.data.sampling, frame_interval=cfg.data.frame_interval, clips=clips, crops=crops,
                bad_file_policy=policy, seed=cfg.train.seed, transform=transform, decoder=cfg.data.decoder,
                decoder_threads=cfg.data.decoder_threads, **extra)


def device_augment(cfg: Config):
    """The batched training recipe for `data.augment=device` (None for `cpu`)."""
    if cfg.data.augment != "device":
        return None

    return DeviceAugment(cfg.data.input_size, grayscale=cfg.data.grayscale)


def loader(dataset, batch_size: int, sampler: Sampler, workers: int, seed: int):
    """A loader reading in the sampler's order (it collects skipped bad files in `.skipped`)."""
    collate = pad_collate if isinstance(dataset.transform, RawClip) else None
    return build_loader(dataset, batch_size, shuffle=False, num_workers=workers, seed=seed, sampler=sampler,
                        collate_fn=collate)
