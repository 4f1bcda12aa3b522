"""The front door: one call from any model to ranked class names, and the clips a model is fed.

    classify = ila.pipeline("runs/demo")                       # a run, checkpoint, pretrained folder, Hub id, release
    classify("clip.mp4")                                         # [{"video": "clip.mp4", "predictions": [...]}]
    classify(["a.mp4", "videos/"], topk=3)                       # files and folders, as `ila predict` takes them
    classify(frames)                                             # uint8 (T, H, W, 3): [{"video": "<array>", ...}]
    classify("long.mp4", window=4, stride=2)                     # [{"video", "duration", ..., "windows": [...]}]
    for w in classify("rtsp://camera/live", window=2, stride=1):   # a live stream: a generator, one window at a time
        print(w["start"], w["end"], w["predictions"][0], w["delay"])
    zero_shot = ila.pipeline("ViT-B-32.pt", temporal="mean", classes=["dancing", "cooking"])   # CLIP, no training

    processor = ila.Processor.from_pretrained("runs/demo")      # the model's preprocessing record
    views = processor("clip.mp4")                                # (views, T, 3, S, S), ready for model(...)

A pipeline is an inference session (`ila.engine.session.InferenceSession`: the weights loaded once, fused, class
names and text features) called on videos: it returns exactly what `ila predict --json` prints for the same input.
CLIP weights with `temporal="mean"` and class names score CLIP zero-shot (frames averaged), the standard baseline;
variants whose modules CLIP's weights leave untrained are refused (`ila.engine.session.check_zero_shot`).

Frames in memory are read by the same dataset code as a decoded file (`ila.data.dataset.VideoDataset`: the test
views' frame sampling, then `ila.data.transforms.TestTransform`), through `ArrayReader`, a reader like a decoder's.
A file is resized while it is decoded (to the transform's short side) and an array by the transform itself, so the
two agree exactly when the frames already have that short side, and to resampling noise otherwise.
"""
from __future__ import annotations

import os
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ila.config import load_config
from ila.data.annotations import Sample
from ila.data.dataset import VideoDataset
from ila.data.decode import Reader, checked_indices
from ila.data.preprocessing import Preprocessing
from ila.data.stream import DEFAULT_TIMEOUT, check_timeout
from ila.engine.live import shown, stream_windows
from ila.engine.predict import check_window_flags, stream_input, video_files, windows_of
from ila.engine.session import InferenceSession, zero_shot_config
from ila.errors import UserError
from ila.weights.sources import read_weights

ARRAY = "<array>"                                  # the "video" of frames given in memory


# ----------------------------------------------------------------------------------------- frames in memory

def as_frames(video: Any) -> np.ndarray:
    """A video given in memory as uint8 RGB frames `(T, H, W, 3)` (a NumPy array or a tensor, on any device);
    anything else is a one-line UserError."""
    if isinstance(video, torch.Tensor):
        video = video.detach().cpu().numpy()
    if not isinstance(video, np.ndarray):
        raise UserError(f"a video is a path, a folder, a stream URL or uint8 frames (T, H, W, 3), not a "
                        f"{type(video).__name__}")
    if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3 or 0 in video.shape:
        raise UserError(f"frames must be a uint8 array (T, H, W, 3) of RGB pixels 0-255, got {video.dtype} "
                        f"{tuple(video.shape)}")
    return video


class ArrayReader(Reader):
    """Frames in memory, read as a decoder's reader reads a file (`ila.data.decode.open_video`): `num_frames` and
    `read(indices) -> uint8 (N, H, W, 3)`. `short_side` is accepted and left to the test transform, whose resize
    brings the frames to it (a decoder resizes while it converts colours; frames already at that size are not
    resized by either)."""

    def __init__(self, frames: np.ndarray, path: str = ARRAY):
        self.frames, self.path = as_frames(frames), path

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    def read(self, indices, short_side: int | None = None) -> np.ndarray:
        return self.frames[np.asarray(checked_indices(self.path, indices, self.num_frames), dtype=np.int64)]



class ArrayOpener:
    """A dataset's `open` for samples whose path names frames in memory (`arrays`: path -> frames); any other
    path goes to `fallback`, the dataset's own opener."""

    def __init__(self, arrays: dict[str, np.ndarray], fallback):
        self.arrays, self.fallback = arrays, fallback

    def __call__(self, path: str):
        return ArrayReader(self.arrays[path], path) if path in self.arrays else self.fallback(path)


def with_arrays(dataset: VideoDataset, arrays: dict[str, np.ndarray]) -> VideoDataset:
    """`dataset` (in place) reading the samples named in `arrays` from memory: the same sampling and transform
    as its files."""
    if arrays:
        dataset.open = ArrayOpener(arrays, dataset.open)
    return dataset


# ----------------------------------------------------------------------------------------- the processor

class Processor:
    """A video (a file, a frame folder or uint8 frames `(T, H, W, 3)`) -> the test views a model is
    fed, `(views, T, 3, S, S)` float, views = test clips x crops: decoded, sampled and normalised by the dataset
    code every inference session uses (`VideoDataset`: `test_views` sampling, `TestTransform`), from a model's
    preprocessing record (`ila.data.preprocessing.Preprocessing`, or its dict).

        processor = ila.Processor.from_pretrained("runs/demo")
        views = processor("clip.mp4")                                   # (views, T, 3, S, S)
        probs = model(views, ila.tokenize(names)).logits.softmax(-1).mean(0)

    (`ila.create_model(weights="runs/demo")` is the model; a classifier takes `model(views)`.) An unreadable video
    is a one-line UserError (`ila.data.decode.VideoReadError`). `decoder`: a `data.decoder` name."""

    def __init__(self, preprocessing: Preprocessing | dict, decoder: str = "pyav"):
        if isinstance(preprocessing, dict):
            preprocessing = Preprocessing.from_dict(preprocessing)
        if not isinstance(preprocessing, Preprocessing):
            raise UserError(f"a processor is built from a preprocessing record (ila.data.preprocessing.Preprocessing "
                            f"or its dict), not a {type(preprocessing).__name__}; Processor.from_pretrained reads "
                            f"a model's")
        self.preprocessing, self.decoder = preprocessing, decoder

    @classmethod
    def from_pretrained(cls, source: Any, overrides: Sequence[str] = (), decoder: str = "pyav",
                        **options) -> "Processor":
        """The processor of a model: any source `ila.create_model` reads (CLIP weights: 8 frames at their
        resolution, as `ila.pipeline` builds them), a model (`model.preprocessing`) or a pipeline. `overrides`:
        `--set` assignments (`eval.crops=3`); `options`: reader options (`revision=`, ...)."""
        if isinstance(source, Pipeline):
            source = source.session.model
        if isinstance(getattr(source, "preprocessing", None), Preprocessing) and not overrides:
            return cls(source.preprocessing, decoder)
        record = read_weights(source, **options)
        if not record.complete:
            return cls(Preprocessing.of(zero_shot_config(record, overrides=overrides)), decoder)
        if record.preprocessing is not None and not overrides:
            return cls(record.preprocessing, decoder)
        raw = dict(record.config or {"model": record.model})
        if record.preprocessing is not None:         # as `load_model` reads a record: its clips win
            for section, values in record.preprocessing.config_sections().items():
                raw[section] = {**(raw.get(section) or {}), **values}
        return cls(Preprocessing.of(load_config(raw, overrides)), decoder)

    def dataset(self, videos: Sequence[str]) -> VideoDataset:
        """The test dataset of `videos` (paths) under this record, as an inference session builds it."""
        p = self.preprocessing
        return VideoDataset([Sample(str(v), 0) for v in videos], root="", num_frames=p.num_frames,
                            input_size=p.input_size, train=False, sampling=p.sampling, frame_interval=p.frame_interval,
                            clips=p.test_clips, crops=p.test_crops, bad_file_policy="error", decoder=self.decoder)

    def __call__(self, video: Any) -> torch.Tensor:
        """`(views, T, 3, S, S)` float32 test views of one video (a path, folder or uint8 frames)."""
        if isinstance(video, (str, os.PathLike)):
            return self.dataset([os.fspath(video)])[0]["video"]
        return with_arrays(self.dataset([ARRAY]), {ARRAY: as_frames(video)})[0]["video"]   # else a one-line refusal

    def __repr__(self) -> str:
        return f"Processor({self.preprocessing})"


# ----------------------------------------------------------------------------------------- the pipeline

class PipelineSession(InferenceSession):
    """An inference session whose videos may also be frames in memory (`arrays`: sample path -> frames, set for
    one call), read by the session's own dataset (`with_arrays`)."""

    arrays: dict[str, np.ndarray] = {}

    def dataset(self, samples, clips: int | None = None, crops: int | None = None):
        return with_arrays(super().dataset(samples, clips, crops), dict(self.arrays))


class Pipeline:
    """A model ready to classify videos (`ila.pipeline` builds one): `pipeline(videos, topk=None)` takes a path, a
    folder (every video in it), uint8 frames `(T, H, W, 3)` or a list of these, and returns what
    `ila predict --json` prints: per video `{"video": PATH, "predictions": [{"class", "probability"}, ...]}`
    (frames: `"video": "<array>"`), or `{"video": PATH, "error": REASON}` for an unreadable one among several (one
    input alone that cannot be read is a UserError, as for `ila predict`). With `window=SECONDS` (and `stride=`)
    each file is scored in sliding windows, as `ila predict --window` prints them.

    A live stream URL (rtsp://, rtmp://, tcp://, udp://, http(s)://, /dev/videoN; alone, with `window=`) returns a
    generator instead of a list: one dict per window as soon as it is scored, exactly the JSON object `ila predict
    URL --json` prints on its line (`start`, `end`, `predictions`, `delay`), because a live stream may never end
    (`list(...)` collects the windows of one that does). It ends when the sender ends the stream and raises
    `ila.data.stream.StreamStopped` after `timeout` seconds without a frame (default 10). `session`: the
    inference session; `processor`: the clips it feeds the model."""

    def __init__(self, session: InferenceSession, topk: int = 5):
        self.session, self.topk = session, topk

    @property
    def model(self):
        return self.session.model

    @property
    def class_names(self) -> list[str]:
        return self.session.class_names

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.of(self.session.cfg)

    @property
    def processor(self) -> Processor:
        return Processor(self.preprocessing, self.session.cfg.data.decoder)

    def __call__(self, videos: Any, topk: int | None = None, progress: bool = True, window: float | None = None,
                 stride: float | None = None, timeout: float | None = None) -> list[dict] | Iterator[dict]:
        topk = self.topk if topk is None else topk
        if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
            raise UserError(f"topk={topk!r}: use 1 or more")
        items = list(videos) if isinstance(videos, (list, tuple)) else [videos]
        window, stride = check_window_flags(window, stride)
        url = stream_input([os.fspath(i) if isinstance(i, os.PathLike) else i for i in items
                            if isinstance(i, (str, os.PathLike))])
        if url is not None or timeout is not None:
            if url is None:
                raise UserError("timeout= applies to live streams (rtsp://, tcp://, http(s)://, ... or /dev/videoN)")
            if len(items) > 1:
                stream_input(items)                   # the one-line refusal of a stream among other videos
            if window is None:
                raise UserError(f"{url}: a live stream is scored in windows as it plays; give window=SECONDS "
                                f"(and stride=SECONDS)")
            timeout = check_timeout(DEFAULT_TIMEOUT if timeout is None else timeout)
            return (shown(w) for w in stream_windows(self.session, url, window, stride, topk, timeout))
        arrays: dict[str, np.ndarray] = {}
        errors: dict[str, str] = {}
        paths: list[str] = []
        for i, item in enumerate(items):
            if isinstance(item, (np.ndarray, torch.Tensor)):
                if window is not None:
                    raise UserError("window= reads a video file's timestamps; frames in memory have none")
                key = f"<array {i}>"                  # one name per array while the session runs them
                arrays[key] = as_frames(item)
                paths.append(key)
            elif isinstance(item, (str, os.PathLike)):
                paths += video_files([os.fspath(item)], errors if len(items) > 1 else None)
            else:
                as_frames(item)                       # the one-line refusal
        session = self.session
        if window is not None:
            results = [windows_of(session, path, window, stride, topk) for path in paths]
            results = [{**r, "windows": [{k: v for k, v in w.items() if k != "probabilities"} for w in r["windows"]]}
                       if "windows" in r else r for r in results]
        else:
            if isinstance(session, PipelineSession):
                session.arrays = arrays
            elif arrays:
                raise UserError("this pipeline's session reads files only; build it with ila.pipeline to pass frames")
            try:
                results = session.predict(paths, topk, progress=progress)
            finally:
                if isinstance(session, PipelineSession):
                    session.arrays = {}
        results = [{**r, "video": ARRAY} if r["video"] in arrays else r for r in results]
        results += [{"video": path, "error": reason} for path, reason in errors.items()]
        failed = [r for r in results if "error" in r]
        if len(results) == 1 and failed:
            raise UserError(f"{failed[0]['video']}: {failed[0]['error']}")
        return results

    def close(self) -> None:
        self.session.close()

    def __repr__(self) -> str:
        return (f"Pipeline({self.session.source!r}, temporal={self.session.cfg.model.temporal!r}, "
                f"{len(self.class_names)} classes, topk={self.topk})")


def pipeline(model: Any, classes: str | list[str] | None = None, temporal: str | None = None, config: Any = None,
             overrides: Sequence[str] = (), device: str | None = None, topk: int = 5,
             quiet: bool = False, precision: str = "fp32") -> Pipeline:
    """A video classifier from `model`: any source `InferenceSession` reads (an ila checkpoint or run directory,
    a pretrained folder, `.safetensors` file or Hub id, the authors' release checkpoint), or CLIP weights (a file or
    a name such as `ViT-B-32:openai`) with `temporal="mean"` and `classes`: CLIP zero-shot, each frame through
    CLIP's image tower and the embeddings averaged, no ILA weights needed (`config`: a preset or config for its
    frames and size; default 8 frames at the weights' resolution). `classes`: a file, `a,b,c`, a shipped list or a
    list (text heads: any names; classifiers: exactly their outputs); `overrides`: `--set` assignments
    (`eval.clips=2`); `device`: default `auto`; `topk`: predictions per video; `precision`: fp32 (exact) or bf16
    (`InferenceSession`). See `Pipeline` for the call."""
    session = PipelineSession(model, classes, overrides, device=device, quiet=quiet, temporal=temporal,
                              config=config, precision=precision)
    return Pipeline(session, topk)
