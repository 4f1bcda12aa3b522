"""From the config's `data` section to datasets and loaders (the engine's only door into `ila.data`)."""
from __future__ import annotations

from torch.utils.data import Sampler

from ila.config import Config
from ila.engine.classes import class_names_from
from ila.errors import UserError


def read_split(cfg: Config, split: str, class_names: list[str] | None = None):
    """(samples, class names) of `data.train_list` or `data.val_list`; names from `class_names`, the
    config's `data.class_names`, or the annotation itself, in that order."""
    from ila.data.annotations import read_annotations

    path = cfg.data.train_list if split == "train" else cfg.data.val_list
    if not path:
        raise UserError(f"data.{split}_list is empty; set it to the {split} annotation file "
                        f"(--set data.{split}_list=PATH)")
    names = class_names or class_names_from(cfg.data.class_names)
    ann = read_annotations(path, root=cfg.data.root, fmt=cfg.data.format, class_names=names)
    names = ann.class_names or names
    if not names:
        names = [str(i) for i in range(max(s.label for s in ann.samples) + 1)]
    return ann.samples, list(names)


def video_dataset(cfg: Config, samples, train: bool, clips: int = 1, crops: int = 1):
    """Training clips (random, per-epoch) or test views (clips x crops, deterministic) of the samples;
    `data.cache=memory` decodes every video once (`ila.data.cache`), `data.augment=crop` trains on random crops."""
    from ila.data.dataset import VideoDataset

    policy = None if cfg.data.bad_files == "auto" else cfg.data.bad_files
    kwargs = {}
    if train and cfg.data.augment == "crop":
        from ila.data.transforms import CropTransform

        kwargs["transform"] = CropTransform(cfg.data.input_size)
    if cfg.data.cache == "memory":
        from ila.data.cache import MemoryVideoDataset as VideoDataset  # noqa: F811

        kwargs["verbose"] = True
    return VideoDataset(samples, root="", num_frames=cfg.data.num_frames, input_size=cfg.data.input_size,
                        train=train, sampling=cfg.data.sampling, frame_interval=cfg.data.frame_interval,
                        clips=clips, crops=crops, bad_file_policy=policy, seed=cfg.train.seed, **kwargs)


def loader(dataset, batch_size: int, sampler: Sampler, workers: int, seed: int):
    """A loader reading in the sampler's order (it collects skipped bad files in `.skipped`)."""
    from ila.data.dataset import build_loader

    return build_loader(dataset, batch_size, shuffle=False, num_workers=workers, seed=seed, sampler=sampler)
