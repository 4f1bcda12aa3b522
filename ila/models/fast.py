"""Rewrites that keep the outputs and save work: algebraic folding of layers that follow each other.

- BatchNorm after a conv, in eval mode: y = gamma (conv(x) - mean) / sqrt(var + eps) + beta is one conv with
  weights w * s and bias (b - mean) s + beta, s = gamma / sqrt(var + eps).
- A Linear that directly follows another Linear: W2 (W1 x + b1) + b2 = (W2 W1) x + (W2 b1 + b2). The folded weight
  is recomputed on every call (cheap: in x mid x out) so training stays exact and gradients reach both layers.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and bias of the conv that equals conv followed by an eval-mode BatchNorm."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    return conv.weight * scale.view(-1, 1, 1, 1), (bias - bn.running_mean) * scale + bn.bias


def run_folded(seq: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Run a Sequential, merging each (Conv2d, BatchNorm2d) pair into one conv (eval mode only)."""
    layers = list(seq)
    i = 0
    while i < len(layers):
        layer = layers[i]
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        if isinstance(layer, nn.Conv2d) and isinstance(nxt, nn.BatchNorm2d) and not nxt.training:
            w, b = fold_conv_bn(layer, nxt)
            x = F.conv2d(x, w, b, layer.stride, layer.padding, layer.dilation, layer.groups)
            i += 2
        else:
            x = layer(x)
            i += 1
    return x


def fold_linears(first: nn.Linear, second: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of `second(first(x))` as a single Linear."""
    return second.weight @ first.weight, second.weight @ first.bias + second.bias
