"""Class lists shipped with `ila`: the public label sets the authors' checkpoints were trained on.

`kinetics400` (400 names, ids 0..399 in the order of the authors' `labels/kinetics_400_labels.csv`) and `ssv2`
(Something-Something v2, 174 names in the order of its official `labels.json` ids). Wherever class names are
accepted (`--classes`, `data.class_names`), these names select a list: `--classes kinetics400`.
"""
from __future__ import annotations

from importlib import resources

BUILTIN = {"kinetics400": "kinetics400.txt", "k400": "kinetics400.txt",
           "ssv2": "ssv2.txt", "something-something-v2": "ssv2.txt"}


def builtin_class_names(name: str) -> list[str] | None:
    """The shipped class list called `name` (case-insensitive), or None when there is none by that name."""
    file = BUILTIN.get(str(name).strip().lower())
    if file is None:
        return None
    text = resources.files(__name__).joinpath(file).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]
