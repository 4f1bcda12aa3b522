"""The preprocessing record: what a clip must look like for a model, written identically into ila checkpoints,
pretrained folders (`config.json`) and ONNX / torch.export metadata, and read back by every consumer.

    {"num_frames": 8, "input_size": 224, "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375],
     "pixel_range": 255, "channels": "RGB", "sampling": "segment", "frame_interval": 4,
     "test_clips": 1, "test_crops": 1}

A clip is `num_frames` RGB frames sampled from the video by `sampling` (`segment`: the middle of T equal segments;
`dense`: every `frame_interval`-th frame), the short side resized to `input_size` and centre-cropped (or
`test_crops` crops along the long side), pixels on the 0-`pixel_range` scale normalised as (x - mean) / std.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ila.data.transforms import MEAN, STD
from ila.errors import UserError

SAMPLINGS = ("segment", "dense")


@dataclass(frozen=True)
class Preprocessing:
    """One model's preprocessing (see the module docstring)."""

    num_frames: int
    input_size: int
    mean: tuple[float, float, float] = MEAN
    std: tuple[float, float, float] = STD
    pixel_range: int = 255
    channels: str = "RGB"
    sampling: str = "segment"
    frame_interval: int = 4
    test_clips: int = 1
    test_crops: int = 1

    @classmethod
    def of(cls, cfg) -> "Preprocessing":
        """The record of a run config (`ila.config.Config`: its data and eval sections)."""
        return cls(num_frames=cfg.data.num_frames or cfg.model.num_frames,     # empty: the model's (data follows it)
                   input_size=cfg.data.input_size or cfg.model.image_resolution, sampling=cfg.data.sampling,
                   frame_interval=cfg.data.frame_interval, test_clips=cfg.eval.clips, test_crops=cfg.eval.crops)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    def config_sections(self) -> dict:
        """The `data` and `eval` config values this record sets."""
        return {"data": {"num_frames": self.num_frames, "input_size": self.input_size, "sampling": self.sampling,
                         "frame_interval": self.frame_interval},
                "eval": {"clips": self.test_clips, "crops": self.test_crops}}

    @classmethod
    def from_dict(cls, raw: Any, where: str = "preprocessing") -> "Preprocessing":
        """A record read from a file, every field checked (a one-line UserError naming `where` otherwise)."""
        if not isinstance(raw, dict):
            raise UserError(f"{where}: \"preprocessing\" must be a JSON object")
        ints = {"num_frames": (1, 1024), "input_size": (1, 4096), "frame_interval": (1, 10_000),
                "test_clips": (1, 1000), "test_crops": (1, 3)}
        for key in (*ints, "sampling", "mean", "std"):
            if key not in raw:
                raise UserError(f"{where}: preprocessing.{key} is missing")
        for key, (low, high) in ints.items():
            value = raw[key]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise UserError(f"{where}: preprocessing.{key} must be an integer in [{low}, {high}], got "
                                f"{_short(value)}")
        if raw["test_crops"] not in (1, 3):
            raise UserError(f"{where}: preprocessing.test_crops must be one of 1, 3, got {_short(raw['test_crops'])}")
        if raw["sampling"] not in SAMPLINGS:
            raise UserError(f"{where}: preprocessing.sampling must be one of {', '.join(SAMPLINGS)}, got "
                            f"{_short(raw['sampling'])}")
        for key, ours in (("mean", MEAN), ("std", STD)):
            value = raw[key]
            if not isinstance(value, list) or len(value) != 3 or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
                raise UserError(f"{where}: preprocessing.{key} must be a list of three finite numbers, got "
                                f"{_short(value)}")
            if any(abs(a - b) > 1e-3 for a, b in zip(value, ours)):
                raise UserError(f"{where}: preprocessing.{key}={value} differs from ila's {list(ours)} "
                                f"(0-255 RGB); this version of ila cannot feed the model such clips")
        for key, ours in (("pixel_range", 255), ("channels", "RGB")):
            if key in raw and raw[key] != ours:
                raise UserError(f"{where}: preprocessing.{key}={_short(raw[key])} differs from ila's {ours!r}")
        return cls(num_frames=raw["num_frames"], input_size=raw["input_size"], sampling=raw["sampling"],
                   frame_interval=raw["frame_interval"], test_clips=raw["test_clips"], test_crops=raw["test_crops"])


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
