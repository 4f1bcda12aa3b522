"""The class list of a run: names from a file or a list, and what a text head needs from them.

A video-text head scores a video against the text features of the class names. While the text tower
is frozen those features never change, so they are computed once (no gradients) and reused for every
batch; a trainable text tower gets the tokens instead and encodes them in each forward pass.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ila.errors import UserError


def class_names_from(spec: str | list[str] | None) -> list[str] | None:
    """Names from a list, a class-name file, a comma-separated string or a shipped list (`kinetics400`, `ssv2`);
    None stays None."""
    if spec is None or spec == "" or isinstance(spec, list):
        return list(spec) if spec else None
    if Path(spec).is_file():
        from ila.data.annotations import load_class_names

        return load_class_names(str(spec))
    if "," in spec:
        return [name.strip() for name in spec.split(",") if name.strip()]
    from ila.labels import BUILTIN, builtin_class_names

    if (names := builtin_class_names(spec)) is not None:
        return names
    raise UserError(f"class names {spec!r}: no such file (give a class-name file, names separated by commas, "
                    f"or a shipped list: {', '.join(BUILTIN)})")


def class_list(cfg, saved: list[str], classes: str | list[str] | None = None, overrides=(),
               source: object = "the checkpoint", model: nn.Module | None = None) -> list[str]:
    """The class names to score a checkpoint with: `--classes`, else a `--set data.class_names=...`, else the
    names saved in the checkpoint, else the config's class-name file.

    A classifier (`model` without a text tower) cannot learn new classes by name: a new list must name exactly
    as many classes as it scores (the saved names, else its outputs); it then renames them, and says so."""
    explicit = any(o.strip().startswith("data.class_names=") for o in overrides)
    given = class_names_from(classes) or (class_names_from(cfg.data.class_names) if explicit else None)
    names = given or list(saved) or class_names_from(cfg.data.class_names)
    if not names:
        raise UserError(f"{source} carries no class names; pass them with --classes FILE or a,b,c")
    if given and model is not None and getattr(model, "text", None) is None:
        scored = len(saved) or model.cfg.num_classes
        if len(given) != scored:
            raise UserError(f"{source} is a classifier of {scored} classes, but --classes names {len(given)}: a "
                            f"classifier cannot take new classes (text-head models can, zero-shot); pass exactly "
                            f"{scored} names to rename its classes")
        if list(given) != list(saved):
            import sys

            print(f"renaming the classifier's {scored} classes to the given names "
                  f"({given[0]!r}, ...; was {saved[0]!r}, ...)" if saved else
                  f"naming the classifier's {scored} outputs with the given names", file=sys.stderr)
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
    from ila.models.clip import tokenize

    tokens = tokenize(class_names, context_length=model.cfg.context_length).to(device)
    if any(p.requires_grad for p in text_tower.parameters()):
        return ClassText(tokens=tokens)
    with torch.no_grad():
        return ClassText(tokens=tokens, features=model.encode_text(tokens).float())


def check_class_count(model: nn.Module, class_names: list[str], what: str = "class list") -> None:
    """A classifier head has a fixed number of outputs; the class list may not name more classes.

    Fewer is allowed: the release's SSv2 head has 400 outputs for 174 classes, and only the first
    `len(class_names)` outputs are scored."""
    if getattr(model, "text", None) is None and len(class_names) > model.cfg.num_classes:
        raise UserError(f"the model's classifier has {model.cfg.num_classes} outputs but the {what} names "
                        f"{len(class_names)} classes; only text-head models take a new class list")
