"""Mixed precision: which dtype `train.amp` means on this device, the autocast context and the loss scaler."""
from __future__ import annotations

import contextlib

import torch

from ila.errors import UserError


def amp_dtype(choice: str, device: torch.device) -> torch.dtype | None:
    """bf16 / fp16 / None (full precision). `auto`: bf16 where supported, else fp16, on GPU; off on CPU.
    bf16 also runs on CPU (slowly; useful to check a run), fp16 needs a GPU."""
    if choice == "off" or (choice == "auto" and device.type != "cuda"):
        return None
    if device.type != "cuda":
        if choice == "bf16":
            return torch.bfloat16
        raise UserError(f"train.amp={choice} needs a GPU; use train.amp=off, auto or bf16 on CPU")
    if choice == "bf16" or (choice == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def autocast(dtype: torch.dtype | None, device: torch.device):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(dtype: torch.dtype | None, device: torch.device) -> torch.amp.GradScaler:
    """A loss scaler for fp16 (disabled, a pass-through, otherwise)."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
