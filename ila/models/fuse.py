"""Inference fusion: `fuse(model)` rewrites a trained model, in place, into one that computes the same outputs with
less work (the idea of timm's `reparameterize_model`). The model keeps one forward for training and evaluation;
these rewrites pay only without autograd, so they are an explicit step taken once, for inference. (Two folds also
pay under autograd, and the training forward does them on the fly: `skip` as a weight product in
`ImplicitAlignment.forward`, `quick_gelu` as one SiLU with the scalings on the MLP's D-wide input and output in
`MLP.forward`; fusing stores the folded weights once.)

Each rewrite has a name, and `fuse(model, ablation=[...])` leaves the named ones out, so each can be measured. The
modules that are not CLIP's rewrite themselves: `fuse` calls every module's own `fuse(rewrites)` (a temporal block's,
`TemporalBlock.fuse`; the IST block does `ln` and `skip`, its alignment `bn` and `point_head`), and rewrites the CLIP
modules (blocks, MLPs, attentions, linears) itself:

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
- ln: the affine part of a pre-norm LayerNorm (`ln_1` before the attention, `ln_2` before the MLP: their outputs
  feed nothing else) folded into the linear it feeds (the packed q/k/v projection, the MLP's first linear); the
  LayerNorm only normalises.
- qkv: the attention's packed q/k/v projection (a bare weight, not an `nn.Linear`, so `onednn` misses it) as a
  oneDNN matmul (`FusedAttention`), with the same fallback.
- point_head: the point head's two grouped 1x1 temporal convolutions (2 groups) as two linears with block-diagonal
  weights, the ReLU and the tanh fused into them on oneDNN: no convolution set-up for a (B, 128, T-1) input.

Algebra of the folds:
- conv then eval BatchNorm: gamma (conv(x) - mean) / sqrt(var + eps) + beta is one conv with weights w * s and bias
  (b - mean) s + beta, s = gamma / sqrt(var + eps).
- a Linear that directly follows another Linear: W2 (W1 x + b1) + b2 = (W2 W1) x + (W2 b1 + b2).
- a Linear after a LayerNorm's affine: W (n * g + beta) + b = (W diag g) n + (W beta + b), n the normalised input.
- a 1x1 convolution with G groups over (B, C, P) is a linear over C with a block-diagonal weight (G blocks).

Precision (`fuse(model, precision=...)`, one of PRECISIONS; the rewrites come first, then the cast, once):
- fp32 (the default): the rewrites above, nothing else; the outputs are those of the unfused model up to float32
  rounding (bit-identical to `fuse(model)`).
- bf16: the frame tower (the patch stem, `ln_pre` and every block, with their alignment nets) cast once to
  bfloat16; the model casts its input clip to it and the tower's output tokens back to float32, so `ln_post`, the
  projection, the video head, the text tower and the logits stay float32. In the tower, linears and the folded
  alignment convolutions (channels-last, like their activations) run as oneDNN bf16 kernels with their
  activation / residual add fused in, attention as one bf16 SDPA kernel; LayerNorm and SDPA's softmax accumulate
  in float32 inside their bf16 kernels (PyTorch's CPU kernels compute bf16 reductions in float32). Cast-once
  measured 1.58x faster than `torch.autocast` (B/32 8f, batch 1, 1 thread, CPU time; autocast re-casts every
  weight at every call and keeps the elementwise work and the residual stream in fp32: less drift, 2.3e-3
  against 8.3e-3 of the largest logit). Agreement with fp32 and speed:
  docs/guide/precision.md. int8 (dynamic quantization of the linears) was measured and is not offered: on this
  project's AMX CPU it was slower than bf16 with a larger drift.

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
from ila.models.clip import MLP, QUICK_GELU_SCALE, Attention, QuickGELU, ResidualAttentionBlock

FUSIONS = ("bn", "skip", "quick_gelu", "onednn", "ln", "qkv", "point_head")
# inference precisions `fuse` takes (and `--precision` offers): the one list, with the dtype each casts the tower to
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
# bf16 units: x86 avx512_bf16 / AMX, Arm's bf16 extension (flags as /proc/cpuinfo names them)
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def parse_precision(precision: str | None) -> str:
    """`precision` as a name of PRECISIONS (None: fp32); a one-line UserError naming the choices otherwise."""
    if precision is None:
        return "fp32"
    if not isinstance(precision, str) or precision not in PRECISIONS:
        shown = repr(precision) if len(repr(precision)) <= 26 else f"{repr(precision)[:20]}..."
        raise UserError(f"unknown precision {shown}; choose one of {', '.join(PRECISIONS)}"
                        + (" (int8 was measured slower than bf16 on CPU, with a larger drift, and is not offered; "
                           "see the precision guide)"
                           if precision == "int8" else ""))
    return precision


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (Linux), or None where they cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        return None
    return None


def bf16_cpu_note(flags: set[str] | None = None) -> str | None:
    """One line to tell the user when bf16 inference on this CPU has no bf16 units (it runs, converted to and from
    fp32 around fp32 arithmetic, no faster and possibly slower than fp32); None where the units are there or the
    flags cannot be read."""
    flags = cpu_flags() if flags is None else flags
    if flags is None or flags & set(BF16_CPU_FLAGS):
        return None
    return ("note: this CPU has no bf16 units (no avx512_bf16/amx_bf16 in its flags): --precision bf16 runs "
            "emulated and may be slower than fp32; use --precision fp32 here")


def parse_ablation(ablation: Iterable[str] | str | None) -> tuple[str, ...]:
    """Rewrites to leave out: a list of names or a comma-separated string; a UserError for an unknown name."""
    if ablation is None:
        return ()
    names = [n.strip() for n in (ablation.split(",") if isinstance(ablation, str) else ablation) if n.strip()]
    unknown = [n for n in names if n not in FUSIONS]
    if unknown:
        raise UserError(f"unknown fusion {unknown[0]!r} to leave out; the fusions are {', '.join(FUSIONS)}")
    return tuple(n for n in FUSIONS if n in names)


# what oneDNN's fused kernels take here: float32, and bfloat16 where this build and CPU have its bf16 kernels
_ONEDNN_DTYPES = (torch.float32, torch.bfloat16) if torch.backends.mkldnn.is_available() and \
    torch.ops.mkldnn._is_mkldnn_bf16_supported() else (torch.float32,)


def onednn_usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the oneDNN fused kernels can run: CPU float32 (or bfloat16 where oneDNN has bf16 kernels: a bf16
    model, `fuse(precision="bf16")`), no autograd through them, no autocast, not under the compiler or exporter
    (which fuse by themselves and would break on these checks), no dispatch mode (a FLOP counter sees aten ops
    only)."""
    if torch.compiler.is_compiling():
        return False
    return (x.device.type == "cpu" and x.dtype == weight.dtype and x.dtype in _ONEDNN_DTYPES
            and torch.backends.mkldnn.is_available()
            and not (torch.is_grad_enabled() and x.requires_grad)
            and not torch.is_autocast_enabled("cpu")
            and not is_in_torch_dispatch_mode())


def _frozen(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach().clone(), requires_grad=False)


ONEDNN_ACT = {None: "none", "silu": "swish", "relu": "relu", "tanh": "tanh"}


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, act: str | None = None,
           residual: torch.Tensor | None = None, onednn: bool = True) -> torch.Tensor:
    """`act(x W^T + b) + residual` (act: None, 'silu', 'relu' or 'tanh'; not both act and residual on oneDNN):
    one oneDNN matmul with the activation or the add fused in where `onednn_usable`, else `F.linear` and the rest."""
    if onednn and onednn_usable(x, weight) and not (act and residual is not None):
        if residual is not None:
            return torch.ops.mkldnn._linear_pointwise.binary(x, residual, weight, bias, "add")
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, ONEDNN_ACT[act], [], "")
    out = F.linear(x, weight, bias)
    inplace = not torch.is_grad_enabled()  # in place when no graph needs its input
    if act == "silu":
        out = F.silu(out, inplace=inplace)
    elif act == "relu":
        out = F.relu(out, inplace=inplace)
    elif act == "tanh":
        out = out.tanh_() if inplace else out.tanh()
    return out if residual is None else residual + out


class FusedLinear(nn.Module):
    """`act(x W^T + b) + residual` through `linear`. The weight keeps its plain layout: oneDNN reads it about as
    fast as a packed copy, which would double the weights' memory."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, act: str | None = None, onednn: bool = True):
        super().__init__()
        if act not in ONEDNN_ACT:
            raise ValueError(f"act must be one of {sorted(k for k in ONEDNN_ACT if k)} or None, got {act!r}")
        self.weight = _frozen(weight)
        self.bias = None if bias is None else _frozen(bias)
        self.out_features, self.in_features = weight.shape
        self.act, self.onednn = act, onednn

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        return linear(x, self.weight, self.bias, self.act, residual, self.onednn)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, act={self.act}, onednn={self.onednn}"


class GroupedPointwise(nn.Module):
    """A stack of 1x1 Conv1d (groups) + activation layers over `(B, C, P)` as linears with block-diagonal weights
    over the channels, each activation fused into its linear: `(B, C, P)` -> `(B, C_out, P)`."""

    def __init__(self, seq: nn.Sequential):
        super().__init__()
        acts = {nn.ReLU: "relu", nn.Tanh: "tanh"}
        layers, items = [], list(seq)
        for i, conv in enumerate(items):
            if not isinstance(conv, nn.Conv1d):
                continue
            if conv.kernel_size != (1,) or conv.padding not in ((0,), "valid") or conv.stride != (1,):
                raise ValueError("GroupedPointwise takes 1x1 convolutions only")
            nxt = items[i + 1] if i + 1 < len(items) else None
            act = acts.get(type(nxt))
            weight = torch.block_diag(*conv.weight[..., 0].chunk(conv.groups, dim=0))  # (out, in), block-diagonal
            layers.append(FusedLinear(weight, conv.bias, act))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, 2)
        for layer in self.layers:
            x = layer(x)
        return x.transpose(1, 2)


class FusedAttention(Attention):
    """`Attention` whose packed q/k/v projection runs through `linear` (oneDNN on CPU); the maths is
    `Attention.forward`'s."""

    def __init__(self, attn: Attention):
        nn.Module.__init__(self)
        self.heads = attn.heads
        self.in_proj_weight = _frozen(attn.in_proj_weight)
        self.in_proj_bias = _frozen(attn.in_proj_bias)
        self.out_proj = attn.out_proj

    def in_proj(self, x: torch.Tensor, rows: slice) -> torch.Tensor:
        return linear(x, self.in_proj_weight[rows], self.in_proj_bias[rows])


class FusedConvReLU(nn.Module):
    """A convolution with a BatchNorm folded in and the ReLU after it: one oneDNN convolution where
    `onednn_usable`, else `F.conv2d` then ReLU."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, onednn: bool = True):
        super().__init__()
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        # channels-last like the alignment's activations: oneDNN would otherwise reorder the weight on every call
        self.weight = _frozen((conv.weight * scale.view(-1, 1, 1, 1)).contiguous(memory_format=torch.channels_last))
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


def fold_layer_norm(ln: nn.LayerNorm, target: nn.Module, weight: str, bias: str) -> nn.LayerNorm:
    """Fold `ln`'s affine (gamma, beta) into the linear `target.<weight>`, `target.<bias>` that reads `ln`'s
    output alone; returns the LayerNorm without affine that replaces `ln`."""
    w, b = getattr(target, weight), getattr(target, bias)
    setattr(target, bias, _frozen(w @ ln.bias + b))  # W beta + b, with the unscaled W
    setattr(target, weight, _frozen(w * ln.weight))  # W diag(gamma)
    return nn.LayerNorm(ln.normalized_shape, eps=ln.eps, elementwise_affine=False)


def as_fused_linear(layer: nn.Module, onednn: bool, act: str | None = None) -> nn.Module:
    """An `nn.Linear` as a `FusedLinear` (the same weights); anything else as it is."""
    if isinstance(layer, FusedLinear):
        return layer
    return FusedLinear(layer.weight, layer.bias, act, onednn) if isinstance(layer, nn.Linear) else layer


def fold_block_layer_norms(block: nn.Module) -> None:
    """The `ln` rewrite of a pre-norm block (`ln_1` -> `attn`, `ln_2` -> `mlp`): each LayerNorm's affine folded into
    the linear it feeds (the packed q/k/v projection, the MLP's first linear). A block already folded is left as
    it is."""
    if block.ln_1.elementwise_affine and block.ln_2.elementwise_affine:
        block.ln_1 = fold_layer_norm(block.ln_1, block.attn, "in_proj_weight", "in_proj_bias")
        block.ln_2 = fold_layer_norm(block.ln_2, block.mlp.c_fc, "weight", "bias")


def fuses_itself(module: nn.Module, root: nn.Module) -> bool:
    """Whether `fuse` calls `module.fuse(rewrites)`: a module with a `fuse` method of its own (a temporal block,
    the alignment), other than a model that is fused as a whole (`root`, or one nested in it: it has `fused`)."""
    return module is not root and not hasattr(module, "fused") and callable(getattr(module, "fuse", None))


@torch.no_grad()
def fuse(model: nn.Module, ablation: Iterable[str] | str | None = (), precision: str = "fp32") -> nn.Module:
    """Rewrite `model` (an ILAModel) in place for inference; `ablation`: names from FUSIONS to leave out;
    `precision`: a name of PRECISIONS (fp32: the rewrites only; bf16: then the frame tower cast once, `cast_tower`).
    Returns the model, in eval mode and inference-only. Fusing a fused model again is an error.

    Each module that has a `fuse(rewrites)` method rewrites itself (`TemporalBlock.fuse`: a variant's blocks own
    their rewrites, as timm's `reparameterize_model` asks each module); the CLIP modules they are made of (blocks,
    MLPs, attentions, linears) are rewritten here."""
    left_out = parse_ablation(ablation)
    precision = parse_precision(precision)
    if getattr(model, "fused", ()):
        raise UserError("this model is already fused; fuse an unfused model (fusing twice would fold twice)")
    rewrites = tuple(n for n in FUSIONS if n not in left_out)
    onednn = "onednn" in rewrites
    model.eval()
    for module in list(model.modules()):  # parents before children: a block's `ln` fold precedes its MLP's
        if fuses_itself(module, model):
            module.fuse(rewrites)
        if "ln" in rewrites and isinstance(module, ResidualAttentionBlock):
            fold_block_layer_norms(module)
        if "quick_gelu" in rewrites and isinstance(module, MLP) and isinstance(module.gelu, QuickGELU):
            module.c_fc = FusedLinear(module.c_fc.weight * QUICK_GELU_SCALE, module.c_fc.bias * QUICK_GELU_SCALE, "silu",
                                      onednn)
            module.gelu = nn.Identity()
            module.c_proj = FusedLinear(module.c_proj.weight / QUICK_GELU_SCALE, module.c_proj.bias, None, onednn)
    if "qkv" in rewrites:
        for module in list(model.modules()):
            for name, child in list(module.named_children()):
                if type(child) is Attention:
                    setattr(module, name, FusedAttention(child))
    if onednn:
        for module in list(model.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(module, name, as_fused_linear(child, True))
    for p in model.parameters():
        p.requires_grad_(False)
    model.fused = rewrites or ("none",)
    cast_tower(model, precision)
    return model


def cast_tower(model: nn.Module, precision: str) -> None:
    """The frame tower of a fused `model` (`model.visual`'s stem, `ln_pre` and blocks: nearly all of its work) in
    `precision`'s dtype, cast once; the model's `forward_features` casts the clip to the tower's dtype and the
    tower's tokens back to float32. Everything after the tower (`ln_post`, the projection, the head) and the text
    tower stay float32. fp32: nothing to do. The folded convolutions keep their channels-last layout."""
    dtype = PRECISIONS[precision]
    if dtype == torch.float32:
        return
    visual = model.visual
    for name, value in (("class_embedding", visual.class_embedding), ("positional_embedding",
                                                                         visual.positional_embedding)):
        setattr(visual, name, _frozen(value.to(dtype)))
    for module in (visual.conv1, visual.ln_pre, visual.transformer):
        module.to(dtype)
