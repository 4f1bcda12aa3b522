"""The class list of a run: names from a file or a list, and what a text head needs from them.

A video-text head scores a video against the text features of the class names. While the text tower
is frozen those features never change, so they are computed once (no gradients) and reused for every
batch; a trainable text tower gets the tokens instead and encodes them in each forward pass.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ila.data.annotations import load_class_names
from ila.errors import UserError
from ila.labels import BUILTIN, builtin_class_names
from ila.models.clip import tokenize


def class_names_from(spec: str | list[str] | None) -> list[str] | None:
    """Names from a list, a class-name file, a comma-separated string or a shipped list (`kinetics400`, `ssv2`);
    None stays None."""
    if spec is None or spec == "" or isinstance(spec, list):
        return list(spec) if spec else None
    if Path(spec).is_file():
        return load_class_names(str(spec))
    if "," in spec:
        return [name.strip() for name in spec.split(",") if name.strip()]

    if (names := builtin_class_names(spec)) is not None:
        return names
    raise UserError(f"class names {spec!r}: no such file (give a class-name file, names separated by commas, "
                    f"or a shipped list: {', '.join(BUILTIN)})")


def class_list(cfg, saved: list[str], classes: str | list[str] | None = None, overrides=(),
               source: object = "the checkpoint", model: nn.Module | None = None) -> list[str]:
    """The class names to score a checkpoint with: `--classes`, else a `--set data.class_names=...`, else the
    names saved in the checkpoint, else the config's class-name file.

    A classifier (`model` without a text tower) cannot learn new classes by name: a new list renames its outputs
    (said on stderr); `check_class_count` holds every list to exactly the classifier's outputs."""
    explicit = any(o.strip().startswith("data.class_names=") for o in overrides)
    given = class_names_from(classes) or (class_names_from(cfg.data.class_names) if explicit else None)
    names = given or list(saved) or class_names_from(cfg.data.class_names)
    if not names:
        raise UserError(f"{source} carries no class names; pass them with --classes FILE or a,b,c")
    if given and saved and list(given) != list(saved) and model is not None and getattr(model, "text", None) is None \
            and len(given) == model.cfg.num_classes:
        print(f"renaming the classifier's {len(given)} classes to the given names ({given[0]!r}, ...; was "
              f"{saved[0]!r}, ...)", file=sys.stderr)
    return names


@dataclass
class ClassText:
    """What the head takes for the class names: cached features, or tokens to encode each time."""

    tokens: torch.Tensor | None = None
    features: torch.Tensor | None = None

    def kwargs(self) -> dict:
        if self.features is not None:
            return {"text_features": self.features}
        if self.tokens is not None:
            return {"text": self.tokens}
        return {}


def class_text(model: nn.Module, class_names: list[str], device: torch.device) -> ClassText:
    """Tokens, and cached features while the text tower is frozen, for a text head; empty for a classifier."""
    text_tower = getattr(model, "text", None)
    if text_tower is None:
        return ClassText()

    tokens = tokenize(class_names, context_length=model.cfg.context_length).to(device)
    if any(p.requires_grad for p in text_tower.parameters()):
        return ClassText(tokens=tokens)
    with torch.no_grad():
        return ClassText(tokens=tokens, features=model.encode_text(tokens).float())


def check_class_count(model: nn.Module, class_names: list[str], what: str = "class list",
                      source: object = None) -> None:
    """A classifier head scores exactly its outputs, so its class list must name exactly that many classes
    (text heads take any list). Anything else is one UserError line: a shorter list would silently take the
    softmax over the first K outputs, a longer one name classes the model cannot score. (The authors' SSv2
    release has 400 outputs for 174 classes: `ila convert --trim-classifier` keeps the first 174.)"""
    if getattr(model, "text", None) is not None:
        return
    outputs = model.cfg.num_classes
    if len(class_names) != outputs:
        at = f"{source}: " if source is not None else ""
        hint = (f"; if only the first {len(class_names)} outputs were trained (the authors' SSv2 release), convert "
                f"it with `ila convert --trim-classifier`" if len(class_names) < outputs else "")
        raise UserError(f"{at}the model's classifier has {outputs} outputs but the {what} names "
                        f"{len(class_names)} classes; give exactly {outputs} names (only text-head models take "
                        f"another class list){hint}")
