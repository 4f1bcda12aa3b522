"""Inference fusion: `fuse(model)` rewrites a trained model, in place, into one that computes the same outputs with
less work (the idea of timm's `reparameterize_model`). The model keeps one forward for training and evaluation;
these rewrites pay only without autograd, so they are an explicit step taken once, for inference.

Each rewrite has a name, and `fuse(model, ablation=[...])` leaves the named ones out, so each can be measured:

- bn: every eval-mode BatchNorm of the alignment folded into the convolution before it, with the ReLU that follows
  fused into the same convolution (also across a max-pool: ReLU is monotone, so it commutes with max).
- skip: the interactive tokens' 128->D projection (`alignment.token_proj`) folded into the block's `temporal_skip_fc`
  (a Linear directly after a Linear is one Linear); the interactive class token goes through `temporal_skip_fc`
  alone, inside the alignment, and the block's own `temporal_skip_fc` becomes the identity.
- quick_gelu: QuickGELU x sigmoid(1.702 x) = silu(1.702 x) / 1.702, the 1.702 folded into the MLP's first linear
  (weight and bias), the 1 / 1.702 into its second linear's weight: one SiLU between the linears.
- onednn: on CPU in float32 without autograd, linears run as oneDNN matmuls with the SiLU or the residual add fused
  in, and the folded conv + ReLU as one oneDNN convolution. Elsewhere (GPU, autocast, torch.compile/export, a
  FLOP counter) the same modules fall back to the plain kernels, so the fused model runs everywhere.

Algebra of the folds:
- conv then eval BatchNorm: gamma (conv(x) - mean) / sqrt(var + eps) + beta is one conv with weights w * s and bias
  (b - mean) s + beta, s = gamma / sqrt(var + eps).
- a Linear that directly follows another Linear: W2 (W1 x + b1) + b2 = (W2 W1) x + (W2 b1 + b2).

The folded weights replace the ones they come from (no second copy is kept), so a fused model is for inference
only: it stays in eval mode, its parameters do not require gradients, `train()` raises, and a checkpoint is not
written from it (its tensors are not the trained ones). Gradients with respect to the input remain exact.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from ila.errors import UserError

FUSIONS = ("bn", "skip", "quick_gelu", "onednn")


def parse_ablation(ablation: Iterable[str] | str | None) -> tuple[str, ...]:
    """Rewrites to leave out: a list of names or a comma-separated string; a UserError for an unknown name."""
    if ablation is None:
        return ()
    names = [n.strip() for n in (ablation.split(",") if isinstance(ablation, str) else ablation) if n.strip()]
    unknown = [n for n in names if n not in FUSIONS]
    if unknown:
        raise UserError(f"unknown fusion {unknown[0]!r} to leave out; the fusions are {', '.join(FUSIONS)}")
    return tuple(n for n in FUSIONS if n in names)


def onednn_usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the oneDNN fused kernels can run: CPU float32, no autograd through them, no autocast, not under the
    compiler or exporter (which fuse by themselves and would break on these checks), no dispatch mode (a FLOP
    counter sees aten ops only)."""
    if torch.compiler.is_compiling():
        return False
    return (x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32 and torch.backends.mkldnn.is_available()
            and not (torch.is_grad_enabled() and x.requires_grad)
            and not torch.is_autocast_enabled("cpu")
            and not is_in_torch_dispatch_mode())


def _frozen(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach().clone(), requires_grad=False)


class FusedLinear(nn.Module):
    """`act(x W^T + b) + residual` (act: None or 'silu'): one oneDNN matmul with the activation or the add fused in
    where `onednn_usable`, else `F.linear`. The weight keeps its plain layout: oneDNN reads it about as fast as a
    packed copy, which would double the weights' memory."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, act: str | None = None, onednn: bool = True):
        super().__init__()
        self.weight = _frozen(weight)
        self.bias = None if bias is None else _frozen(bias)
        self.out_features, self.in_features = weight.shape
        self.act, self.onednn = act, onednn

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        act = self.act
        if self.onednn and onednn_usable(x, self.weight) and not (act and residual is not None):
            if residual is not None:
                return torch.ops.mkldnn._linear_pointwise.binary(x, residual, self.weight, self.bias, "add")
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "swish" if act else "none", [], "")
        out = F.linear(x, self.weight, self.bias)
        if act == "silu":
            out = F.silu(out, inplace=not torch.is_grad_enabled())  # in place when no graph needs its input
        return out if residual is None else residual + out

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, act={self.act}, onednn={self.onednn}"


class FusedConvReLU(nn.Module):
    """A convolution with a BatchNorm folded in and the ReLU after it: one oneDNN convolution where
    `onednn_usable`, else `F.conv2d` then ReLU."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, onednn: bool = True):
        super().__init__()
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        self.weight = _frozen(conv.weight * scale.view(-1, 1, 1, 1))
        self.bias = _frozen((bias - bn.running_mean) * scale + bn.bias)
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.onednn = onednn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.onednn and onednn_usable(x, self.weight):
            return torch.ops.mkldnn._convolution_pointwise(x, self.weight, self.bias, self.padding, self.stride,
                                                           self.dilation, self.groups, "relu", [], "")
        out = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return F.relu(out, inplace=not torch.is_grad_enabled())


def fold_conv_bn_relu(seq: nn.Sequential, onednn: bool) -> nn.Sequential:
    """Each Conv2d, BatchNorm2d, [MaxPool2d, ...] ReLU run of `seq` as FusedConvReLU, [MaxPool2d, ...]."""
    layers, out, i = list(seq), [], 0
    while i < len(layers):
        conv, bn = layers[i], layers[i + 1] if i + 1 < len(layers) else None
        relu_at = next((k for k in range(i + 2, len(layers)) if not isinstance(layers[k], nn.MaxPool2d)), None)
        if (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and relu_at is not None
                and isinstance(layers[relu_at], nn.ReLU)):
            out += [FusedConvReLU(conv, bn, onednn), *layers[i + 2:relu_at]]
            i = relu_at + 1
        else:
            out.append(conv)
            i += 1
    return nn.Sequential(*out)


def _linear(layer: nn.Module, onednn: bool, act: str | None = None) -> nn.Module:
    if isinstance(layer, FusedLinear):
        return layer
    return FusedLinear(layer.weight, layer.bias, act, onednn) if isinstance(layer, nn.Linear) else layer


@torch.no_grad()
def fuse(model: nn.Module, ablation: Iterable[str] | str | None = ()) -> nn.Module:
    """Rewrite `model` (an ILAModel) in place for inference; `ablation`: names from FUSIONS to leave out.
    Returns the model, in eval mode and inference-only. Fusing a fused model again is an error."""
    from ila.models.alignment import ImplicitAlignment
    from ila.models.clip import MLP, QuickGELU
    from ila.models.ist_block import ISTBlock

    left_out = parse_ablation(ablation)
    if getattr(model, "fused", ()):
        raise UserError("this model is already fused; fuse an unfused model (fusing twice would fold twice)")
    rewrites = tuple(n for n in FUSIONS if n not in left_out)
    onednn = "onednn" in rewrites
    model.eval()
    for module in list(model.modules()):
        if "bn" in rewrites and isinstance(module, ImplicitAlignment):
            module.interactive_block = fold_conv_bn_relu(module.interactive_block, onednn)
            module.point_head.spatial = fold_conv_bn_relu(module.point_head.spatial, onednn)
        if "skip" in rewrites and isinstance(module, ISTBlock):
            proj, skip = module.alignment.token_proj, module.temporal_skip_fc
            module.alignment.token_proj = FusedLinear(skip.weight @ proj.weight, skip.weight @ proj.bias + skip.bias,
                                                      onednn=onednn)
            module.alignment.class_proj = _linear(skip, onednn)
            module.temporal_skip_fc = nn.Identity()
        if "quick_gelu" in rewrites and isinstance(module, MLP) and isinstance(module.gelu, QuickGELU):
            module.c_fc = FusedLinear(module.c_fc.weight * 1.702, module.c_fc.bias * 1.702, "silu", onednn)
            module.gelu = nn.Identity()
            module.c_proj = FusedLinear(module.c_proj.weight / 1.702, module.c_proj.bias, None, onednn)
    if onednn:
        for module in list(model.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(module, name, _linear(child, True))
    for p in model.parameters():
        p.requires_grad_(False)
    model.fused = rewrites or ("none",)
    return model
