"""Shareable models, read: a folder of `config.json` + `model.safetensors` (+ `README.md`), the form the Hugging
Face Hub serves; one `.safetensors` file carrying the same JSON in its metadata; or a Hub repo id `ORG/NAME[@REV]`.

Loading reads JSON and safetensors only, so it never runs code, and checks every value's type: a malformed
folder is a one-line `UserError`. Hub repo ids go through `huggingface_hub.snapshot_download` (its cache,
`revision=`, offline from the cache when `HF_HUB_OFFLINE=1`); only the three files are fetched.
(`ila.hub` writes these folders.)
"""
from __future__ import annotations

import json
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ila import jsonsafe
from ila.config import REGISTERED_CHOICES, config_from_dict, require_complete
from ila.config import _describe as describe_type
from ila.data.preprocessing import Preprocessing
from ila.errors import UserError, printable
from ila.models.config import ModelConfig
from ila.weights.sources import Probe, WeightsRecord, register_reader

FORMAT = "ila-pretrained/1"
CONFIG_FILE, WEIGHTS_FILE, CARD_FILE = "config.json", "model.safetensors", "README.md"
FILES = (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE)
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(@[\w./-]+)?$")
_FILE_SUFFIXES = (".pt", ".pth", ".safetensors", ".yaml", ".yml", ".json", ".ckpt", ".bin")


def is_hub_id(spec: str) -> bool:
    """Whether `spec` can only mean a Hub repo id `ORG/NAME[@REVISION]` (it is no local path)."""
    spec = str(spec)
    return (not os.path.exists(spec) and bool(_REPO_ID.match(spec)) and ".." not in spec
            and not spec.split("@")[0].lower().endswith(_FILE_SUFFIXES))


def is_pretrained_folder(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and ((path / CONFIG_FILE).exists() or (path / WEIGHTS_FILE).exists())


def resolve(name_or_dir: str | Path, revision: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """A local folder or `.safetensors` file as it is; a Hub repo id -> its snapshot folder in the Hub cache."""
    spec = str(name_or_dir)
    if os.path.exists(spec):
        return Path(spec)
    if not is_hub_id(spec):
        raise UserError(f"{spec}: no such file or folder (nor a Hugging Face Hub repo id ORG/NAME)")
    repo, _, at = spec.partition("@")
    revision = revision or at or None
    from huggingface_hub import constants, snapshot_download

    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    try:
        folder = snapshot_download(repo, revision=revision, cache_dir=cache_dir, allow_patterns=list(FILES),
                                   local_files_only=offline, library_name="ila")
    except Exception as e:  # noqa: BLE001 - every Hub failure is one line for the user
        kind = type(e).__name__
        why = ("not in the local Hugging Face cache and HF_HUB_OFFLINE=1 forbids downloading" if offline
               and kind in ("LocalEntryNotFoundError", "OfflineModeIsEnabled") else
               f"not in the local Hugging Face cache and the Hub could not be reached ({_first_line(e)[:100]})"
               if kind == "LocalEntryNotFoundError" else
               "no such repository on the Hub (or it is private: log in with `hf auth login`)"
               if kind in ("RepositoryNotFoundError", "GatedRepoError") else
               f"no revision {revision!r} in the repository" if kind == "RevisionNotFoundError" else
               f"{kind}: {(str(e).strip().splitlines() or [''])[0][:160]}")
        raise UserError(f"Hub model {repo}{'@' + revision if revision else ''}: {why}") from None
    return Path(folder)


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:160]


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{path} is not a readable safetensors file ({_first_line(e)})") from None


def safetensors_metadata(path: Path) -> dict:
    """The metadata of a safetensors file (its header only)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{path} is not a readable safetensors file ({_first_line(e)})") from None


def read_folder(folder: Path) -> WeightsRecord:
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise UserError(f"{folder} is not a shared ila model folder: it has no {name} (a shared ila model folder "
                            f"holds {CONFIG_FILE} and {WEIGHTS_FILE})")
    where = folder / CONFIG_FILE
    try:
        meta = jsonsafe.loads(where.read_text(encoding="utf-8"), where)
    except UnicodeDecodeError:
        raise UserError(f"{where} is not a text file") from None
    return record_of(meta, _load_tensors(folder / WEIGHTS_FILE), where, folder.resolve().name or "model", folder / WEIGHTS_FILE)


def read_file(path: Path) -> WeightsRecord:
    metadata = safetensors_metadata(path)
    if "ila_config" not in metadata:
        raise UserError(f"{path} has no ila config in its metadata (bare weights); write it with `ila convert` or "
                        f"`ila export --format hub`, or load the weights with safetensors yourself")
    try:
        meta = jsonsafe.loads(metadata["ila_config"], f"{path}: the ila config in its metadata")
    except jsonsafe.InvalidJSON as e:
        raise UserError(f"{path}: the ila config in its metadata is not valid JSON ({e.msg})") from None
    return record_of(meta, _load_tensors(path), path, path.stem, path)


def _is(value: Any, tp) -> bool:
    """Strict JSON type check against a config field's annotation (no string -> number coercion)."""
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return any(_is(value, a) for a in typing.get_args(tp))
    if origin is list:
        return isinstance(value, list) and all(_is(v, typing.get_args(tp)[0]) for v in value)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if tp is str:
        return isinstance(value, str)
    return False


def _require(where, key: str, value: Any, tp) -> None:
    registered = REGISTERED_CHOICES.get(key)          # e.g. model.temporal: a registered variant's name
    if registered is not None and not (isinstance(value, str) and value in registered()):
        raise UserError(f"{where}: {key} must be one of {', '.join(registered())}, got {json.dumps(value)[:80]}")
    if not _is(value, tp):
        raise UserError(f"{where}: {key} must be {describe_type(tp)}, got {json.dumps(value)[:80]}")


def record_of(meta: Any, tensors: dict[str, torch.Tensor], where, name: str, path: Path) -> WeightsRecord:
    """Validate a config.json's content and return the record it describes."""
    if not isinstance(meta, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(meta).__name__}")
    if meta.get("ila_format") != FORMAT:
        other = f" (it looks like a {meta['model_type']!r} model of another library)" if "model_type" in meta else ""
        raise UserError(f"{where} is not an ila model config: no \"ila_format\": \"{FORMAT}\"{other}")
    for key, tp in (("model", dict), ("preprocessing", dict), ("class_names", list)):
        if not isinstance(meta.get(key), tp):
            raise UserError(f"{where}: \"{key}\" must be a JSON {'object' if tp is dict else 'array'}")
    _require(where, "preset", meta.get("preset"), str | None)
    _require(where, "class_names", meta["class_names"], list[str])
    hints = typing.get_type_hints(ModelConfig)
    unknown = sorted(set(meta["model"]) - set(hints))
    if unknown:
        raise UserError(f"{where}: unknown model key {unknown[0]!r} (written by a newer ila?)")
    for key, value in meta["model"].items():
        _require(where, f"model.{key}", value, hints[key])
    pre = Preprocessing.from_dict(meta["preprocessing"], str(where))
    require_complete({"model": meta["model"]}, str(where))   # never fill a saved model's gaps with defaults
    raw = {"model": {"preset": meta.get("preset"), **meta["model"]}, **pre.config_sections(), "name": name}
    try:
        cfg = config_from_dict(raw)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    except Exception as e:  # noqa: BLE001 - e.g. a zero patch size: still the file's fault, one line
        raise UserError(f"{where}: the model config is not valid ({type(e).__name__}: {_first_line(e)})") from None
    evaluation = meta.get("evaluation") if isinstance(meta.get("evaluation"), dict) else None
    return WeightsRecord("pretrained", str(where), tensors, dict(meta["model"]), config=cfg.to_dict(),
                         class_names=list(meta["class_names"]), preprocessing=pre, evaluation=evaluation,
                         provenance=meta.get("source") if isinstance(meta.get("source"), str) else "", path=path)


def _is_pretrained(probe: Probe) -> bool:
    if probe.is_dir():
        return is_pretrained_folder(probe.path)
    if probe.is_file(".safetensors"):
        return "ila_config" in safetensors_metadata(probe.path)
    return isinstance(probe.text, str) and probe.path is None and is_hub_id(probe.text)


@register_reader("pretrained", _is_pretrained, "a pretrained folder, a .safetensors file with ila metadata, or a "
                                                "Hub repo id ORG/NAME", order=20)
def read(probe: Probe, revision: str | None = None, cache_dir: str | Path | None = None, **_) -> WeightsRecord:
    path = resolve(probe.text, revision, cache_dir)
    record = read_file(path) if path.is_file() else read_folder(path)
    record.source = printable(str(probe.text))
    return record
