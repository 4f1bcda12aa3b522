"""The authors' released checkpoints, read: `{'model', 'optimizer', 'lr_scheduler', 'max_accuracy', 'epoch',
'config'}` with a pickled yacs `CfgNode` inside, read by `ila.safe_load`'s restricted unpickler (only tensors,
storages and plain containers are rebuilt, `CfgNode` becomes a plain dict, anything else is refused: no pickled
code runs). The key mapping and the variant detection are the model's knowledge (`ila.models.release`).
"""
from __future__ import annotations

import torch

from ila.errors import UserError, one_line, printable
from ila.models.release import detect_variant, release_config, release_to_ila
from ila.weights.sources import Probe, WeightsRecord, register_reader


def _release_state(probe: Probe) -> dict | None:
    state = probe.state_dict()
    if not isinstance(state, dict):
        return None
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(k, str) and torch.is_tensor(v)}


def _is_release(probe: Probe) -> bool:
    if probe.is_dir() or not (isinstance(probe.spec, dict) or probe.is_file()) or probe.is_file(".safetensors"):
        return False
    state = _release_state(probe)
    return state is not None and any(".message_attn." in k for k in state)


@register_reader("release", _is_release, "an authors' release checkpoint (.pth)", order=30)
def read(probe: Probe, num_frames: int | None = None, variant: str | None = None, **_) -> WeightsRecord:
    """`num_frames` (default: the checkpoint's) must be what its MIT was trained for; `variant`: k400 or ssv2
    (default: from the keys)."""
    if not isinstance(probe.spec, dict) and probe.path is None:
        raise UserError(f"checkpoint not found: {printable(str(probe.text))}")
    if probe.is_dir():
        raise UserError(f"{printable(str(probe.text))} is a folder, not a release checkpoint file")
    state = _release_state(probe)
    if state is None:
        raise UserError(f"{probe.text or 'the weights'} holds a {type(probe.content()).__name__}, not a checkpoint dict")
    variant = variant or detect_variant(state)
    if variant not in ("k400", "ssv2"):
        raise UserError(f"variant={variant!r}: use 'k400' or 'ssv2'")
    try:
        cfg = release_config(state, num_frames, variant)
        mapped = release_to_ila(state, cfg.interactive_block)
    except (KeyError, IndexError, ValueError, TypeError, RuntimeError) as e:   # UserError passes through
        raise UserError(f"the weights do not have the keys and shapes of an ILA release checkpoint "
                        f"({type(e).__name__}: {one_line(e, 120)})") from None
    source = probe.text if probe.text is not None else "the release weights"
    name = str(source).replace("\\", "/").rsplit("/", 1)[-1]
    return WeightsRecord("release", str(source), mapped, cfg.to_dict(),
                         provenance=f"the authors' release checkpoint {name}")
