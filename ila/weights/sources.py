"""Where weights come from: each kind of source is one registered reader that returns one `WeightsRecord`.

    record = read_weights("runs/demo")             # an ila run directory -> its best.pt (else newest loadable)
    record = read_weights("k400_b32_8.pth")        # an authors' release checkpoint
    record = read_weights("ORG/NAME")              # a Hub repo id (a pretrained folder)
    record.state_dict, record.model, record.class_names, record.preprocessing, record.train_state

Readers are tried in registration order; each says whether a source is its kind (`match`) and reads it (`read`).
A file is opened once (`Probe`): a `.pt` is read by ila's restricted unpickler (`ila.safe_load`, no code in the
file runs) and then told apart by its content. The library's readers: `checkpoint` (ila checkpoints and run
directories), `pretrained` (a shared folder, a `.safetensors` file with ila metadata, a Hub repo id), `release`
(the authors' checkpoints) and `clip` (OpenAI / open_clip weights, a file or a pretrained name).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ila import safe_load
from ila.data.preprocessing import Preprocessing
from ila.errors import UserError, printable
from ila.presets import preset_name
from ila.registry import Registry

SOURCES = Registry("source of weights", key="weights",
                   builtin=("ila.weights.checkpoint", "ila.weights.pretrained", "ila.weights.release",
                            "ila.weights.clip"))


@dataclass
class WeightsRecord:
    """What a reader found: weights under ila's key names and everything known beside them."""

    kind: str                                   # the reader: checkpoint, pretrained, release, clip
    source: str                                 # what was read, for messages (a path, a Hub id, a CLIP name)
    state_dict: dict[str, torch.Tensor]
    model: dict                                 # model config keys the weights determine
    complete: bool = True                       # `model` spells out a whole model (it can be built from it alone)
    config: dict | None = None                  # the saved run config (checkpoints, pretrained folders)
    class_names: list[str] = field(default_factory=list)
    preprocessing: Preprocessing | None = None
    train_state: dict | None = None             # an ila checkpoint's training state (resume)
    metrics: dict | None = None                 # best.pt: the validation that made it
    evaluation: dict | None = None              # a pretrained folder's recorded results
    provenance: str = ""                        # where the weights came from, in words (model cards)
    path: Path | None = None                    # the file read (a run directory's best.pt, a Hub snapshot)
    tower_only: bool = False                    # CLIP: the towers only; the video modules keep their initialisation

    @property
    def sha256(self) -> str:
        """`weights_sha256` of the state dict (computed once)."""
        if "_sha256" not in self.__dict__:
            self.__dict__["_sha256"] = weights_sha256(self.state_dict)
        return self.__dict__["_sha256"]


def weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """A hash of a model's weights that does not depend on the file format: names, dtypes, shapes and bytes, in
    name order. The same tensors in a `.pt` checkpoint and in a `model.safetensors` give the same hash."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{str(t.dtype).removeprefix('torch.')}|{tuple(t.shape)}\n".encode())
        if t.numel():
            h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.dtype != torch.bool
                     else t.numpy().tobytes())
    return h.hexdigest()


class Probe:
    """A source as the readers see it: the spec, and the file's content read once on first use."""

    def __init__(self, spec: Any):
        self.spec = spec
        self.text = None if isinstance(spec, dict) else os.fspath(spec) if isinstance(spec, os.PathLike) else spec
        self._loaded: Any = None
        self._done = False

    @property
    def path(self) -> Path | None:
        return Path(self.text) if isinstance(self.text, str) and self.text and os.path.exists(self.text) else None

    def is_file(self, *suffixes: str) -> bool:
        p = self.path
        return p is not None and p.is_file() and (not suffixes or p.suffix.lower() in suffixes)

    def is_dir(self) -> bool:
        p = self.path
        return p is not None and p.is_dir()

    def content(self) -> Any:
        """A dict given directly, or the object a PyTorch file holds (`ila.safe_load`: nothing in it runs)."""
        if isinstance(self.spec, dict):
            return self.spec
        if not self._done:
            self._loaded, self._done = safe_load.load(self.text), True
        return self._loaded

    def state_dict(self) -> dict | None:
        """The tensors of a loaded file or dict, unwrapped from `model` / `state_dict` containers; None when the
        content is not a mapping."""
        content = self.content()
        if isinstance(content, safe_load.ScriptObject):
            return safe_load.script_state_dict(content)
        if not isinstance(content, dict):
            return None
        for wrapper in ("state_dict", "model"):
            if isinstance(content.get(wrapper), dict):
                content = content[wrapper]
        return content


@dataclass(frozen=True)
class Reader:
    """One kind of source: `match(probe) -> bool` and `read(probe, **options) -> WeightsRecord`."""

    match: Callable[[Probe], bool]
    read: Callable[..., WeightsRecord]


def register_reader(name: str, match: Callable[[Probe], bool], description: str = "", order: int = 50):
    """Decorator: register `read(probe, **options)` as the reader of sources `match` accepts. Readers are asked
    in `order` (ila's: checkpoint 10, pretrained 20, release 30, clip 90: the most specific first), whatever
    order their modules were imported in."""
    def decorate(read):
        SOURCES.register(name, Reader(match, read), description=description, order=order)
        return read

    return decorate


def read_weights(source: Any, kind: str | None = None, **options) -> WeightsRecord:
    """The record of `source` (a path, a Hub id, a CLIP name or a state dict): the first registered reader whose
    `match` accepts it reads it (or the reader `kind`). `options` go to the reader (e.g. `revision=`,
    `resume=True`, `num_frames=`); a reader ignores the ones it does not know."""
    if isinstance(source, WeightsRecord):
        return source
    if not isinstance(source, (str, os.PathLike, dict)):
        raise UserError(f"weights must be a path, a Hub repo id, a CLIP name or a state dict, not a "
                        f"{type(source).__name__}")
    probe = Probe(source)
    if isinstance(probe.text, str) and (not probe.text.strip() or "\0" in probe.text):
        raise UserError(f"weights {printable(repr(probe.text))}: give a file, a folder, a Hub repo id or a CLIP name")
    if isinstance(probe.text, str) and probe.path is None and preset_name(probe.text) is not None:
        raise UserError(f"{printable(probe.text)} is a preset, a model without weights: give its weights (an ila "
                        f"checkpoint or run, a pretrained folder or Hub id, the authors' checkpoint: `ila convert "
                        f"RELEASE.pth OUT --classes ...`), or train one (`ila train --config {probe.text}`)")
    if kind is not None:
        return SOURCES.get(kind, "weights kind").obj.read(probe, **options)
    for entry in sorted(SOURCES, key=lambda e: e.order):
        if entry.obj.match(probe):
            return entry.obj.read(probe, **options)
    shown = printable(probe.text if probe.text is not None else "the state dict")
    if probe.text is not None and not os.path.exists(probe.text):
        pathlike = probe.text.lower().endswith((".pt", ".pth", ".bin", ".ckpt", ".safetensors")) or \
            probe.text.count("/") != 1
        raise UserError(f"{shown}: no such file or folder" + ("" if pathlike else " (nor a Hugging Face Hub repo id "
                                                                                  "ORG/NAME with this name)"))
    if probe.is_file(".safetensors"):
        raise UserError(f"{shown} has no ila config in its metadata (bare weights) and holds no CLIP weights; write "
                        f"it with `ila convert` or `ila export --format hub`, or load the weights with safetensors "
                        f"yourself")
    raise UserError(f"{shown} holds no weights ila can read: an ila checkpoint or run directory, a pretrained folder "
                    f"or .safetensors file, an authors' release checkpoint or CLIP weights")
