"""CLIP weights, read: an OpenAI `.pt` (a TorchScript archive, whose parameters are taken from the archive's data,
never through `torch.jit.load`), a plain or open_clip state dict (`.pt`, `.bin`, `.safetensors`), or a pretrained
name such as `ViT-B-32:openai` whose file open_clip downloads (or finds in its cache) and ila reads with its own
restricted reader. The record holds the towers under ila's names and the geometry read from them; the video
modules of a model built on it keep their initialisation.
"""
from __future__ import annotations

import os
import socket

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ila import safe_load
from ila.errors import UserError, printable
from ila.models.clip import clip_geometry, clip_to_ila_keys
from ila.weights.sources import Probe, WeightsRecord, register_reader

_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


def looks_like_path(source: str) -> bool:
    """A weights file rather than an open_clip name (`ViT-B-32:openai`, `hf-hub:org/name`)."""
    if source.startswith("hf-hub:"):
        return False
    return os.sep in source or "/" in source or source.lower().endswith(_WEIGHT_SUFFIXES)


def _online(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub (where open_clip fetches weights) can be reached: one connection attempt."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False

    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _cached_pretrained(pretrained: dict) -> str | None:
    """A copy of open_clip pretrained weights already on this machine (Hugging Face cache or ~/.cache/clip)."""
    repo = (pretrained.get("hf_hub") or "").strip("/")
    if repo:
        from huggingface_hub import try_to_load_from_cache

        for filename in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
            found = try_to_load_from_cache(repo, filename)
            if isinstance(found, str) and os.path.isfile(found):
                return found
    url = pretrained.get("url") or ""
    legacy = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url)) if url else ""
    return legacy if legacy and os.path.isfile(legacy) else None


def pretrained_file(name: str) -> str:
    """The local file of an open_clip pretrained name `ARCH:TAG` (downloaded by open_clip when online)."""
    arch, _, tag = name.rpartition(":")
    arch = arch or "ViT-B-32"
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg

    pretrained = get_pretrained_cfg(arch, tag)
    if not pretrained:
        raise UserError(f"unknown pretrained CLIP {arch}:{tag}; give a weights file, or a name from "
                        f"open_clip.list_pretrained() written ARCH:TAG, e.g. ViT-B-32:openai")
    filename = os.path.basename(pretrained.get("url") or "") or "open_clip_pytorch_model.bin"
    cached = _cached_pretrained(pretrained)
    if cached is not None:
        return cached
    if not _online():                              # fail at once rather than retrying for a minute
        raise UserError(f"CLIP weights {arch}:{tag} are not on this machine and there is no network to fetch "
                        f"them: download {filename} elsewhere and pass the weights file instead, "
                        f"train.init=PATH/{filename} (Python: ila.from_clip(PATH/{filename}))")
    try:
        return download_pretrained(pretrained)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"could not fetch pretrained CLIP {arch}:{tag} ({str(e).splitlines()[0][:120]}); offline, "
                        f"pass the weights file instead, e.g. ViT-B-32.pt from OpenAI or open_clip_pytorch_model.bin"
                        ) from None


def _read_file(path: str) -> dict:
    """The tensors of a CLIP weights file, read without running anything in it."""
    if path.lower().endswith(".safetensors"):
        try:
            return load_file(path)
        except Exception as e:  # noqa: BLE001
            raise UserError(f"cannot read CLIP weights from {printable(path)}: not a readable safetensors file "
                            f"({str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__})") from None
    try:
        state = safe_load.load(path)
    except safe_load.FileRefused:
        raise
    except safe_load.FileUnreadable as e:
        raise UserError(f"cannot read CLIP weights from {e.path}: {e.reason}") from None
    return state


def clip_state_dict(state) -> dict[str, torch.Tensor]:
    """CLIP's tensors (float32) from a loaded file's content: a TorchScript archive, a state dict, or a
    `state_dict` / `model` container."""
    if isinstance(state, safe_load.ScriptObject):
        state = safe_load.script_state_dict(state)
    if not isinstance(state, dict):
        raise UserError(f"cannot read CLIP weights: the file holds a {type(state).__name__}, not a state dict")
    for wrapper in ("state_dict", "model"):
        if wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    state = {k.removeprefix("module."): v for k, v in state.items() if isinstance(k, str)}
    return {k: v.float() if torch.is_floating_point(v) else v for k, v in state.items() if torch.is_tensor(v)}


def read_clip_weights(source) -> dict[str, torch.Tensor]:
    """CLIP's tensors under CLIP's names from a state dict, a file or a pretrained name."""
    if isinstance(source, dict):
        return clip_state_dict(source)
    source = os.fspath(source)
    if os.path.exists(source):
        return clip_state_dict(_read_file(source))
    if looks_like_path(source):
        raise UserError(f"file not found: {printable(source)}")
    return clip_state_dict(_read_file(pretrained_file(source)))


def _is_clip(probe: Probe) -> bool:
    if isinstance(probe.spec, dict):
        return True                                  # a state dict that is no release: CLIP's (checked on reading)
    if probe.is_dir():
        return False
    if probe.path is None:
        return isinstance(probe.text, str) and not looks_like_path(probe.text)   # a pretrained name
    if not probe.is_file():
        return False
    if probe.is_file(".safetensors"):                # bare weights (ila's own carry metadata: `pretrained`)

        try:
            with safe_open(str(probe.path), framework="pt") as f:
                return any(k in f.keys() for k in ("visual.conv1.weight", "module.visual.conv1.weight"))
        except Exception:  # noqa: BLE001 - not a readable safetensors file: no reader's (the fallback says so)
            return False
    state = probe.state_dict()
    return isinstance(state, dict) and any(k in state for k in ("visual.conv1.weight", "module.visual.conv1.weight")) \
        and not any(isinstance(k, str) and ".message_attn." in k for k in state)      # an authors' release


@register_reader("clip", _is_clip, "CLIP weights: an OpenAI .pt, an open_clip file, or a name such as ViT-B-32:openai",
                 order=90)
def read(probe: Probe, **_) -> WeightsRecord:
    if isinstance(probe.spec, dict):
        state = clip_state_dict(probe.spec)
    elif probe.path is not None and not probe.is_file(".safetensors"):
        try:
            content = probe.content()
        except safe_load.FileRefused:
            raise
        except safe_load.FileUnreadable as e:
            raise UserError(f"cannot read CLIP weights from {e.path}: {e.reason}") from None
        state = clip_state_dict(content)
    else:
        state = read_clip_weights(probe.text)
    geometry = clip_geometry(state)
    source = printable(str(probe.text)) if probe.text is not None else "the CLIP weights"
    return WeightsRecord("clip", source, clip_to_ila_keys(state), geometry, complete=False, tower_only=True,
                         provenance=f"CLIP weights {source}")
