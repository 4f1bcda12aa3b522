"""Prediction: video files and folders in, ranked class names out; pictures of the learnable alignment.

The model, its class list and (for a text head) the class-name text features are loaded once, then
every video is scored from the checkpoint's evaluation views (`eval.clips` x `eval.crops`, per-view
softmax averaged). A text-head model accepts any new class list (zero-shot); a classifier keeps its own.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ila.engine import distributed as dist
from ila.engine.atomic import atomic_path
from ila.engine.classes import check_class_count, class_list, class_text
from ila.engine.evaluate import score_videos
from ila.errors import UserError


def video_files(inputs: list[str]) -> list[str]:
    """Files as given, and the video files (by extension, sorted) directly inside each folder."""
    from ila.data.annotations import VIDEO_EXTENSIONS

    found = []
    for item in inputs:
        if os.path.isdir(item):
            inside = sorted(os.path.join(item, f) for f in os.listdir(item) if f.lower().endswith(VIDEO_EXTENSIONS))
            if not inside:
                raise UserError(f"{item} holds no video files ({', '.join(VIDEO_EXTENSIONS[:5])}, ...)")
            found += inside
        elif os.path.isfile(item):
            found.append(item)
        else:
            raise UserError(f"{item}: no such file or folder")
    return found


class Predictor:
    """A checkpoint loaded once for many videos."""

    def __init__(self, checkpoint: str | Path, classes: str | list[str] | None = None,
                 overrides: list[str] | tuple = ()):
        from ila.engine.checkpoint import load_checkpoint

        self.model, self.cfg, names, _ = load_checkpoint(checkpoint, overrides)
        self.env = dist.Env(device=dist.pick_device(dist.inference_device(self.cfg, overrides)))
        self.model.fuse().to(self.env.device)  # inference only (ila.fuse): same outputs, less work
        self.cfg.data.bad_files = "error"   # never score another video in place of an unreadable one
        self.class_names = class_list(self.cfg, names, classes, overrides, checkpoint, self.model)
        check_class_count(self.model, self.class_names, "--classes")
        self.text = class_text(self.model, self.class_names, self.env.device)

    def dataset(self, paths: list[str]):
        from ila.data.annotations import Sample
        from ila.engine.loaders import video_dataset

        samples = [Sample(path, 0) for path in paths]
        return video_dataset(self.cfg, samples, train=False, clips=self.cfg.eval.clips, crops=self.cfg.eval.crops)

    def scores(self, paths: list[str]) -> torch.Tensor:
        """(videos, classes) probabilities, averaged over the views."""
        from ila.engine.loaders import loader

        dataset = self.dataset(paths)
        data = loader(dataset, self.cfg.eval.batch_size, dist.ShardSampler(len(dataset), self.env),
                      min(self.cfg.data.workers, len(paths) - 1), 0)
        scores = score_videos(self.model, data, self.env, self.text, len(self.class_names),
                                    progress=len(paths) > 1, desc="predict").scores
        return scores

    def predict(self, paths: list[str], topk: int = 5) -> list[dict]:
        """For each video: its path and the top-k classes with probabilities."""
        k = min(topk, len(self.class_names))
        results = []
        for path, row in zip(paths, self.scores(paths)):
            p, i = row.topk(k)
            results.append({"video": path, "predictions": [{"class": self.class_names[c], "probability": round(float(q), 6)}
                                                           for q, c in zip(p.tolist(), i.tolist())]})
        return results

    def visualize(self, path: str, out: str | Path, block: int = -1) -> Path:
        """A picture of one video's frame pairs with the interactive points and alignment masks of `block`."""
        layers = self.cfg.model.vision_layers
        if self.cfg.model.temporal != "ila":
            raise UserError(f"--visualize shows ILA's alignment; this model has temporal={self.cfg.model.temporal!r}")
        if not -layers <= block < layers:
            raise UserError(f"--block {block} is out of range; the model has blocks 0..{layers - 1} (or -1 for the last)")
        video = self.dataset([path])[0]["video"][:1].to(self.env.device)    # first view: (1, T, 3, S, S)
        maps = self.model.alignment_maps(video, block)
        return draw_alignment(video[0].cpu(), maps["points"][0].cpu(), maps["masks"][0].cpu(), out,
                              title=f"{os.path.basename(path)}: block {block % layers}")


def draw_alignment(video: torch.Tensor, points: torch.Tensor, masks: torch.Tensor, out: str | Path,
                   title: str = "") -> Path:
    """Frame pairs as columns (previous frame above, current below), each with its alignment mask shaded
    over it and its interactive point marked. video (T,3,S,S) normalised; points (T-1,4); masks (T-1,2,g,g)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ila.data.transforms import MEAN, STD

    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    frames = ((video.float() * std + mean) / 255).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    pairs, size, grid = points.shape[0], frames.shape[1], masks.shape[-1]
    fig, axes = plt.subplots(2, pairs, figsize=(2.1 * pairs, 5.0), squeeze=False, layout="constrained")
    for t in range(pairs):
        for row, (frame, mask, (x, y)) in enumerate(((frames[t], masks[t, 0], points[t, :2]),
                                                     (frames[t + 1], masks[t, 1], points[t, 2:]))):
            ax = axes[row, t]
            ax.imshow(frame, extent=(0, size, size, 0))
            ax.imshow(mask.numpy(), cmap="magma", alpha=0.45, vmin=0, vmax=1, extent=(0, size, size, 0),
                      interpolation="nearest")
            # grid coordinate c in [-1, 1] puts cell k at 2k/(g-1) - 1; cell k spans pixels [k, k+1] * size/g
            px = lambda c: ((float(c) + 1) / 2 * (grid - 1) + 0.5) * size / grid  # noqa: E731
            ax.plot(px(x), px(y), marker="+", color="cyan", markersize=12, markeredgewidth=2)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(f"frame {t + row}" + (" (previous)" if row == 0 else " (current)"), fontsize=8)
    fig.suptitle(title or "alignment", fontsize=10)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return Path(out)


def format_predictions(results: list[dict]) -> str:
    lines = []
    for r in results:
        lines.append(r["video"])
        lines += [f"  {p['probability']:7.2%}  {p['class']}" for p in r["predictions"]]
    return "\n".join(lines)


def run_predict(checkpoint: str | Path, inputs: list[str], topk: int = 5, as_json: bool = False,
                classes: str | None = None, visualize: str | None = None, block: int = -1,
                overrides: list[str] | tuple = ()) -> list[dict]:
    """`ila predict`: print the top-k classes of every video; optionally draw the alignment pictures."""
    if topk < 1:
        raise UserError(f"--topk {topk}: use 1 or more")
    paths = video_files(inputs)
    predictor = Predictor(checkpoint, classes, overrides)
    results = predictor.predict(paths, topk)
    print(json.dumps(results, indent=2) if as_json else format_predictions(results))
    if visualize:
        out = Path(visualize)
        for path in paths:
            target = out if len(paths) == 1 else out.with_name(f"{out.stem}-{Path(path).stem}{out.suffix or '.png'}")
            predictor.visualize(path, target, block)
    return results
