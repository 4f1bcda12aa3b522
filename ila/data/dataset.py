"""The video dataset (annotations + decoding + sampling + transforms, with a bad-file policy) and its
loader.

Every random choice of an item (frames, augmentation, flip, replacement of a bad file) comes from
`item_rng(seed, epoch, index)`, so the same item at the same epoch is the same clip in any worker
and at any worker count. The epoch lives in shared memory, so `set_epoch` also reaches persistent
workers. Bad files are skipped (training default) or raise `UserError` (evaluation default); each
item says how many files it skipped and which, and the loader from `build_loader` collects them per
epoch in the main process (`loader.skipped`).

At test time a bad file is never replaced by another video: under `skip` (and `mark`, which the evaluator
uses to collect every bad file in one pass) its item carries the reason in `error` and a zero video, and
the consumer leaves it out; under `error` it raises.
"""
from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from ila.data.annotations import Sample
from ila.data.decode import CUDA_IN_WORKERS, VideoReadError, check_threads, decodes_on_gpu, open_video
from ila.data.sampling import item_rng, sample_indices, test_views
from ila.data.transforms import TestTransform, TrainTransform
from ila.errors import UserError

log = logging.getLogger(__name__)

POLICIES = ("skip", "error", "mark")


class VideoDataset(Dataset):
    """Clips of annotated videos.

    An item is a dict: `video` float (T, 3, S, S) in training or (V, T, 3, S, S) at test, V = clips *
    crops (clip-major), always with the V axis; `label` int; `index` the requested index; `sample_index`
    the sample actually used (differs after a skip); `skipped` the number of bad files skipped for this
    item; `skipped_files` those files as "path<TAB>reason" lines ("" when none). Test items also carry
    `error`: "" for a readable video, else why it could not be read (then `video` is zeros: leave it out).
    """

    def __init__(self, samples: list[Sample], root: str, num_frames: int, input_size: int, train: bool,
                 sampling: str = "segment", frame_interval: int = 4, clips: int = 1, crops: int = 1,
                 bad_file_policy: str | None = None, seed: int = 0, transform=None, hflip: bool = False,
                 label_swap=None, randaugment: bool = False, max_retries: int = 20,
                 resize_on_decode: bool = True, decoder: str = "pyav", decoder_threads: int = 1):
        if not samples:
            raise UserError("the dataset has no samples")
        policy = bad_file_policy or ("skip" if train else "error")
        if policy not in POLICIES:
            raise UserError(f"bad_file_policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        if sampling not in ("segment", "dense"):
            raise UserError(f"sampling must be 'segment' or 'dense', got {sampling!r}")
        if num_frames < 1 or input_size < 1 or clips < 1 or frame_interval < 1:
            raise UserError("num_frames, input_size, clips and frame_interval must be positive")
        self.samples = list(samples)
        self.root = root or ""
        self.num_frames, self.input_size, self.train = num_frames, input_size, train
        self.sampling, self.frame_interval = sampling, frame_interval
        self.clips, self.crops = (1, 1) if train else (clips, crops)
        self.bad_file_policy, self.seed, self.max_retries = policy, seed, max_retries
        self.hflip = hflip
        self.label_swap = symmetric_label_swap(label_swap)
        if transform is None:
            transform = TrainTransform(input_size, randaugment=randaugment) if train else TestTransform(input_size, crops)
        self.transform = transform
        self.short_side = getattr(transform, "short_side", None) if resize_on_decode else None
        self.decoder, self.decoder_threads = decoder, check_threads(decoder_threads)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._bad: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Make the random draws of every item depend on `epoch` (also in persistent workers)."""
        self._epoch.fill_(int(epoch))

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def __getitem__(self, index: int) -> dict:
        if not self.train:
            return self._test_item(int(index))
        epoch, current, skipped = self.epoch, int(index), []
        for attempt in range(self.max_retries + 1):
            rng = item_rng(self.seed, epoch, index, attempt)
            sample = self.samples[current]
            path = self.resolve(sample.path)
            try:
                video, label = self._load(path, sample.label, rng)
            except VideoReadError as e:
                if self.bad_file_policy == "error":
                    raise VideoReadError(path, e.reason) from None
                self._note_bad(path, e.reason)
                skipped.append(f"{path}\t{e.reason}")
                current = int(rng.integers(len(self.samples)))
                continue
            return dict(video=video, label=label, index=int(index), sample_index=current,
                        skipped=len(skipped), skipped_files="\n".join(skipped))
        raise UserError(f"{len(skipped)} unreadable files in a row while loading item {index} "
                        f"(last: {skipped[-1].replace(chr(9), ': ')}); check the data")

    def _test_item(self, index: int) -> dict:
        """The test views of video `index`; a bad file raises (`error`) or is marked, never replaced."""
        sample = self.samples[index]
        path = self.resolve(sample.path)
        try:
            video, label = self._load(path, sample.label, item_rng(self.seed, self.epoch, index, 0))
            error = ""
        except VideoReadError as e:
            if self.bad_file_policy == "error":
                raise VideoReadError(path, e.reason) from None
            self._note_bad(path, e.reason)
            video = torch.zeros(self.clips * self.crops, self.num_frames, 3, self.input_size, self.input_size,
                                device="cuda" if decodes_on_gpu(self.decoder) else "cpu")   # as the good ones
            label, error = sample.label, e.reason or "unreadable"
        return dict(video=video, label=label, index=index, sample_index=index, skipped=0, skipped_files="",
                    error=error)

    def resolve(self, path: str) -> str:
        """The file of a sample path: `root` joined unless the path is absolute or already under root."""
        if not self.root or os.path.isabs(path):
            return path
        root = os.path.normpath(self.root)
        if os.path.normpath(path).startswith(root + os.sep):
            return path
        return os.path.join(self.root, path)

    def _load(self, path: str, label: int, rng: np.random.Generator) -> tuple[torch.Tensor, int]:
        if path in self._bad:
            raise VideoReadError(path, self._bad[path])
        with self.open(path) as reader:
            n = reader.num_frames
            if self.train:
                views = sample_indices(n, self.num_frames, self.sampling, True, rng, self.frame_interval)[None]
            else:
                views = test_views(n, self.num_frames, self.clips, self.sampling, self.frame_interval)
            frames = reader.read(views.reshape(-1), short_side=self.short_side)
        clips = torch.as_tensor(frames).permute(0, 3, 1, 2).reshape(len(views), self.num_frames, 3,
                                                                     *frames.shape[1:3])
        if self.train:
            flip = self.hflip and rng.random() < 0.5
            clip = clips[0].flip(-1) if flip else clips[0]
            if flip:
                label = self.label_swap.get(label, label)
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(int(rng.integers(2**62)))   # CPU only: no lazy CUDA calls
                return self.transform(clip), label
        views = [self.transform(c) for c in clips]
        views = [v.unsqueeze(0) if v.dim() == 4 else v for v in views]
        return torch.cat(views), label

    def open(self, path: str):
        """The reader of a video file (`ila.data.cache` serves decoded frames instead)."""
        return open_video(path, threads=self.decoder_threads, decoder=self.decoder, short_side=self.short_side)

    def _note_bad(self, path: str, reason: str) -> None:
        """Remember a bad file (later draws skip it without opening it); log it here unless in a loader
        worker, where the loader logs it once in the main process."""
        if path not in self._bad:
            self._bad[path] = reason
            if get_worker_info() is None:
                log.warning("skipping unreadable file %s: %s", path, reason)


def symmetric_label_swap(label_swap) -> dict[int, int]:
    """A label map for horizontal flips from pairs or a dict ({a: b} also maps b to a)."""
    if not label_swap:
        return {}
    pairs = label_swap.items() if isinstance(label_swap, dict) else label_swap
    mapping: dict[int, int] = {}
    for a, b in pairs:
        a, b = int(a), int(b)
        for x, y in ((a, b), (b, a)):
            if mapping.get(x, y) != y:
                raise UserError(f"label swap maps class {x} to both {mapping[x]} and {y}")
            mapping[x] = y
    return mapping


class SkippedFiles:
    """Bad files skipped in one epoch, gathered in the main process from the items' skip fields."""

    def __init__(self):
        self.files: dict[str, str] = {}
        self.count = 0

    def update(self, batch) -> list[tuple[str, str]]:
        """Record the skips carried by a collated batch (or a single item); return them as (path, reason)."""
        if not isinstance(batch, dict) or "skipped_files" not in batch:
            return []
        entries = batch["skipped_files"]
        found = []
        for entry in [entries] if isinstance(entries, str) else entries:
            for line in filter(None, entry.split("\n")):
                path, _, reason = line.partition("\t")
                self.files.setdefault(path, reason)
                self.count += 1
                found.append((path, reason))
        return found

    def reset(self) -> None:
        self.files.clear()
        self.count = 0

    def summary(self) -> str:
        if not self.count:
            return "no files skipped"
        return f"skipped {self.count} time(s), {len(self.files)} file(s): " + \
               "; ".join(f"{p} ({r})" for p, r in self.files.items())


class EpochShuffleSampler(Sampler[int]):
    """A random order that depends only on (seed, epoch); the epoch follows the dataset's `set_epoch`
    when the dataset has one, else this sampler's own `set_epoch`."""

    def __init__(self, dataset, seed: int = 0):
        self.dataset, self.seed, self._epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self._epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self):
        epoch = getattr(self.dataset, "epoch", self._epoch)
        order = np.random.default_rng([int(self.seed) & 0xFFFFFFFF, int(epoch)]).permutation(len(self.dataset))
        return iter(order.tolist())


class VideoLoader(DataLoader):
    """A DataLoader that gathers skipped files per pass (`skipped`, reset when a pass starts) and turns
    a worker's `UserError` back into a one-line `UserError`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.skipped = SkippedFiles()
        self._logged: set[str] = set()

    def __iter__(self):
        self.skipped.reset()
        iterator = super().__iter__()
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                return
            except UserError as e:
                self._stop_workers(iterator)
                raise UserError(_worker_message(str(e))) from None
            for path, reason in self.skipped.update(batch):
                if self.num_workers > 0 and path not in self._logged:     # workers do not log
                    self._logged.add(path)
                    log.warning("skipping unreadable file %s: %s", path, reason)
            yield batch


    def _stop_workers(self, iterator) -> None:
        """Stop the workers now: left to garbage collection after a worker error, torch waits 5 s."""
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
            self._iterator = None


def build_loader(dataset, batch_size: int, shuffle: bool, num_workers: int, seed: int, sampler=None,
                 drop_last: bool = False, collate_fn=None) -> VideoLoader:
    """A loader with worker processes (persistent when num_workers > 0), pinned memory when a GPU is
    present (not for a dataset that decodes on the GPU: its clips are there already), a shuffle order from
    (seed, epoch) unless a sampler is given, and seeded workers."""
    if sampler is None and shuffle:
        sampler = EpochShuffleSampler(dataset, seed)
    on_gpu = decodes_on_gpu(getattr(dataset, "decoder", None))
    if on_gpu and num_workers:
        raise UserError(CUDA_IN_WORKERS)
    return VideoLoader(dataset, batch_size=batch_size, shuffle=False, sampler=sampler, num_workers=num_workers,
                       pin_memory=torch.cuda.is_available() and not on_gpu, persistent_workers=num_workers > 0,
                       drop_last=drop_last, worker_init_fn=seed_worker, collate_fn=collate_fn,
                       generator=torch.Generator().manual_seed(seed))


def seed_worker(worker_id: int) -> None:
    """Seed Python's and NumPy's global generators in a worker from its torch seed (which the loader
    derives from its seeded generator), for any library code that uses them."""
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def _worker_message(message: str) -> str:
    """The original one-line message of an exception re-raised from a loader worker."""
    if not message.startswith("Caught "):
        return message
    last = message.strip().splitlines()[-1]
    head, sep, rest = last.partition(": ")
    return rest if sep and head.split(".")[-1].endswith("Error") else last
