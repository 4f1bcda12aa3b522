"""The fast path: rewrites that compute the same function with less work or better kernels.

Every idea is one switch of `FastPath`, so each can be measured on its own (`benchmarks/model_speed.py --ablation`);
the straightforward path (`FastPath.off()`) writes the equations out as they read.

- attention: `F.scaled_dot_product_attention` (fused) instead of softmax(Q K^T / sqrt(d)) V written out.
- pooling: each frame's two masks merged before one multiply with its features, and the MI vectors pooled as one
  contraction with the masks, instead of materialising P~_t = m_P * P_t and C~_t = m_C * C_t per pair.
- fold: BatchNorm into the preceding conv (eval); the interactive tokens' 128->D projection into temporal_skip_fc;
  QuickGELU as SiLU: x sigmoid(1.702 x) = silu(1.702 x) / 1.702, the 1.702 applied to the MLP's (narrow) input and
  the 1 / 1.702 folded into its second linear. Folded weights are cached while the
  weights they come from are unchanged, and recomputed with autograd whenever a gradient must reach those weights.
- layout: the alignment convolutions read the (B, T, N, D) tokens as channels-last maps (no transpose copy).
- onednn: on CPU without autograd (inference, float32), linears run on oneDNN with the activation and the
  residual add fused into the matmul, and conv + BatchNorm + ReLU run as one oneDNN convolution.
- class_token: when the head reads only the class tokens (the classifier head), the last block computes only
  their outputs: the other tokens still enter its attention as keys and values, but get no query, output
  projection or MLP (their outputs would be thrown away).

Algebra of the folds:
- conv then eval BatchNorm: gamma (conv(x) - mean) / sqrt(var + eps) + beta is one conv with weights w * s and bias
  (b - mean) s + beta, s = gamma / sqrt(var + eps).
- a Linear that directly follows another Linear: W2 (W1 x + b1) + b2 = (W2 W1) x + (W2 b1 + b2).
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from ila.errors import UserError


@dataclass(frozen=True)
class FastPath:
    """Which rewrites are on. `FastPath.on()` is the fast path, `FastPath.off()` the straightforward one."""

    attention: bool = True
    pooling: bool = True
    fold: bool = True
    layout: bool = True
    onednn: bool = True
    class_token: bool = True

    @classmethod
    def on(cls) -> "FastPath":
        return cls()

    @classmethod
    def off(cls) -> "FastPath":
        return cls(**{f.name: False for f in fields(cls)})

    @classmethod
    def ideas(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def parse(cls, value: "bool | str | FastPath | dict") -> "FastPath":
        """True/False, a FastPath, a dict of switches, or a string: 'on', 'off', 'attention,fold' (only those),
        'on,-onednn' (all but onednn)."""
        if isinstance(value, FastPath):
            return value
        if isinstance(value, bool):
            return cls.on() if value else cls.off()
        if isinstance(value, dict):
            return replace(cls.off(), **value)
        names = [n.strip() for n in str(value).split(",") if n.strip()]
        path = cls.on() if names[:1] == ["on"] else cls.off()
        for name in names:
            if name in ("on", "off"):
                continue
            idea, on = (name[1:], False) if name.startswith("-") else (name, True)
            if idea not in cls.ideas():
                raise UserError(f"unknown fast-path idea {idea!r}; use on, off or any of {', '.join(cls.ideas())}")
            path = replace(path, **{idea: on})
        return path

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))

    def __str__(self) -> str:
        on = [n for n in self.ideas() if getattr(self, n)]
        return "on" if len(on) == len(self.ideas()) else ",".join(on) or "off"


OFF = FastPath.off()


# --------------------------------------------------------------------------- derived weights, cached


def cached(owner: nn.Module, key: str, sources: Sequence[torch.Tensor], compute: Callable[[], torch.Tensor]):
    """`compute()` (a function of `sources`), kept on `owner` until a source changes: an in-place update (its
    version counter), new storage, dtype or device. Not cached when a gradient must flow back to a source."""
    if torch.compiler.is_compiling() or (torch.is_grad_enabled() and any(s.requires_grad for s in sources)):
        return compute()  # under torch.compile the compiler folds (with freezing) and fuses by itself
    stamp = tuple((s._version, s.data_ptr(), s.dtype, s.device) for s in sources)
    store = owner.__dict__.setdefault("_fast_cache", {})
    hit = store.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    with torch.inference_mode(False), torch.no_grad():
        value = compute()
    # holding the sources' storages keeps their addresses from being reused while the stamp refers to them
    store[key] = (stamp, value, [s.untyped_storage() for s in sources])
    return value


def clear_cache(model: nn.Module) -> None:
    """Drop every cached derived weight (they are rebuilt on demand)."""
    for module in model.modules():
        module.__dict__.pop("_fast_cache", None)


# --------------------------------------------------------------------------- linears


def _onednn_usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    if torch.compiler.is_compiling():  # first: the compiler fuses by itself, and the checks below break its graph
        return False
    return (x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32 and torch.backends.mkldnn.is_available()
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
            and not torch.is_autocast_enabled("cpu")
            and not is_in_torch_dispatch_mode())  # e.g. FlopCounterMode, which counts aten ops only


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, fast: FastPath,
           act: str | None = None, residual: torch.Tensor | None = None) -> torch.Tensor:
    """`act(x W^T + b) + residual` (act: None or 'silu'). With `fast.onednn`, on CPU without autograd, one oneDNN
    matmul with the activation or the residual add fused into it (the weight stays as it is: oneDNN reads the
    plain layout about as fast as a packed copy, which would double the weights' memory)."""
    if fast.onednn and _onednn_usable(x, weight) and not (act and residual is not None):
        if residual is not None:
            return torch.ops.mkldnn._linear_pointwise.binary(x, residual, weight, bias, "add")
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "swish" if act == "silu" else "none", [], "")
    out = F.linear(x, weight, bias)
    if act == "silu":
        out = F.silu(out, inplace=not torch.is_grad_enabled())  # in place when no graph needs its input
    return out if residual is None else residual + out


def fold_linears(first: nn.Linear, second: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of `second(first(x))` as a single Linear."""
    return second.weight @ first.weight, second.weight @ first.bias + second.bias


# --------------------------------------------------------------------------- convolutions + BatchNorm


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and bias of the conv that equals conv followed by an eval-mode BatchNorm."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    return conv.weight * scale.view(-1, 1, 1, 1), (bias - bn.running_mean) * scale + bn.bias


def run_folded(seq: nn.Sequential, x: torch.Tensor, fast: FastPath = FastPath()) -> torch.Tensor:
    """Run a Sequential, each (Conv2d, eval BatchNorm2d) pair as one conv with cached folded weights. With
    `fast.onednn` (CPU, no autograd) a ReLU after the pair is fused into the conv, also across a max-pool
    (ReLU is monotone, so it commutes with max)."""
    layers = list(seq)
    i = 0
    while i < len(layers):
        layer = layers[i]
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        if isinstance(layer, nn.Conv2d) and isinstance(nxt, nn.BatchNorm2d) and not nxt.training:
            sources = [layer.weight, nxt.weight, nxt.bias, nxt.running_mean, nxt.running_var]
            sources += [layer.bias] if layer.bias is not None else []
            w, b = cached(layer, "bn_fold", sources, lambda: fold_conv_bn(layer, nxt))
            i += 2
            after = layers[i:i + 2]
            relu_at = next((k for k, m in enumerate(after) if isinstance(m, nn.ReLU)), None)
            if (fast.onednn and _onednn_usable(x, w) and relu_at is not None
                    and all(isinstance(m, nn.MaxPool2d) for m in after[:relu_at])):
                x = torch.ops.mkldnn._convolution_pointwise(x, w, b, layer.padding, layer.stride, layer.dilation,
                                                           layer.groups, "relu", [], "")
                for pool in after[:relu_at]:
                    x = pool(x)
                i += relu_at + 1
            else:
                x = F.conv2d(x, w, b, layer.stride, layer.padding, layer.dilation, layer.groups)
        else:
            x = layer(x)
            i += 1
    return x
