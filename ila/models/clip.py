"""CLIP's image and text towers with CLIP's parameter names, and reading CLIP weights.

Tokens are batch-first, `(batch, tokens, width)`; attention runs through `F.scaled_dot_product_attention`.
`ila.models.fuse` rewrites a trained model for inference (folded weights, oneDNN kernels). CLIP's key names map to
ila's here (`clip_to_ila_keys`) and the geometry is read from the weights (`clip_geometry`); `ila.weights.clip`
reads the files.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ila.errors import UserError


QUICK_GELU_SCALE = 1.702


class QuickGELU(nn.Module):
    """CLIP's activation: x * sigmoid(1.702 x) = silu(1.702 x) / 1.702."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(QUICK_GELU_SCALE * x)


class Linear(nn.Linear):
    """`nn.Linear` that adds an optional `residual` to its output: residual + x W^T + b. (`ila.fuse` turns it into a
    oneDNN matmul with the add fused in.)"""

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        return out if residual is None else residual + out


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d) [+ causal mask]) V over `(..., L, d)` heads, as one fused SDPA kernel."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


class Attention(nn.Module):
    """Multi-head self-attention with `nn.MultiheadAttention`'s parameter layout (`in_proj_weight`, `out_proj`)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def in_proj(self, x: torch.Tensor, rows: slice) -> torch.Tensor:
        """x `(..., D)` through the rows `rows` of the packed q/k/v projection (`ila.fuse` runs it on oneDNN)."""
        return F.linear(x, self.in_proj_weight[rows], self.in_proj_bias[rows])

    def forward(self, x: torch.Tensor, causal: bool = False, residual: torch.Tensor | None = None,
                queries: int | None = None) -> torch.Tensor:
        """Attention of `x` `(n, L, D)`, plus `residual` when given. With `queries`, only the first `queries`
        tokens ask (and come out, with the residual's first `queries` tokens), all `L` answer."""
        n, length, width = x.shape
        heads = self.heads
        if queries is None:
            qkv = self.in_proj(x, slice(None))
            q, k, v = qkv.view(n, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            q = self.in_proj(x[:, :queries], slice(0, width)).view(n, queries, heads, -1).transpose(1, 2)
            kv = self.in_proj(x, slice(width, None))
            k, v = kv.view(n, length, 2, heads, width // heads).permute(2, 0, 3, 1, 4).unbind(0)
            residual = None if residual is None else residual[:, :queries]
        out = attend(q, k, v, causal).transpose(1, 2).reshape(n, q.shape[2], width)
        return self.out_proj(out, residual)


class MLP(nn.Sequential):
    """CLIP's feed-forward block: c_fc -> activation -> c_proj (plus `residual` when given)."""

    def __init__(self, width: int, act: Callable[[], nn.Module], ratio: int = 4):
        super().__init__()
        self.c_fc = Linear(width, width * ratio)
        self.gelu = act()
        self.c_proj = Linear(width * ratio, width)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if type(self.gelu) is QuickGELU and type(self.c_fc) is Linear and type(self.c_proj) is Linear:
            # c_proj(QuickGELU(c_fc(x))) = (W2 silu(W1 (1.702 x) + 1.702 b1)) / 1.702 + b2: the hidden activations
            # (tokens x 4D) take one SiLU pass, forward and backward, instead of three elementwise passes and their
            # gradients; the two scalings fall on the D-wide input and output, 4x smaller
            s = QUICK_GELU_SCALE
            hidden = F.silu(F.linear(x * s, self.c_fc.weight, self.c_fc.bias * s))
            base = self.c_proj.bias if residual is None else residual + self.c_proj.bias
            return torch.add(base, F.linear(hidden, self.c_proj.weight), alpha=1 / s)
        return self.c_proj(self.gelu(self.c_fc(x)), residual)


def activation(quick_gelu: bool) -> Callable[[], nn.Module]:
    return QuickGELU if quick_gelu else nn.GELU


class ResidualAttentionBlock(nn.Module):
    """CLIP's pre-LN block: x + Attn(LN1(x)), then + MLP(LN2(x))."""

    def __init__(self, width: int, heads: int, quick_gelu: bool = True, causal: bool = False):
        super().__init__()
        self.causal = causal
        self.ln_1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = MLP(width, activation(quick_gelu))

    def forward(self, x: torch.Tensor, queries: int | None = None) -> torch.Tensor:
        """Tokens `(n, L, D)` -> `(n, L, D)`, or only the first `queries` tokens' outputs `(n, queries, D)`."""
        x = self.attn(self.ln_1(x), causal=self.causal, residual=x, queries=queries)
        return self.mlp(self.ln_2(x), residual=x)


class Transformer(nn.Module):
    """A stack of blocks under CLIP's name `resblocks`, with optional gradient checkpointing."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.resblocks = nn.ModuleList(blocks)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = self.run_block(block, x)
        return x

    def run_block(self, block: nn.Module, x: torch.Tensor, **kwargs):
        """One block, recomputed in the backward pass instead of stored when gradient checkpointing is on."""
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False, **kwargs)
        return block(x, **kwargs)


class VisionTower(nn.Module):
    """CLIP ViT: patch conv stem, class token, positions, `ln_pre`, blocks, `ln_post` and `proj` on the class token."""

    def __init__(self, resolution: int, patch_size: int, width: int, embed_dim: int, blocks: list[nn.Module]):
        super().__init__()
        self.grid = resolution // patch_size
        scale = width ** -0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(self.grid ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(blocks)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, embed_dim))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Images `(N,3,H,W)` -> tokens `(N, 1+S*S, D)` after `ln_pre`."""
        x = self.conv1(images).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        return self.ln_pre(x)

    def head(self, tokens: torch.Tensor) -> torch.Tensor:
        """Class token -> `ln_post` -> `proj`: the image embedding."""
        return self.ln_post(tokens[:, 0]) @ self.proj

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.transformer(self.embed(images)))


class TextTower(nn.Module):
    """CLIP's causal text transformer; the embedding is taken at the end-of-text token (largest id)."""

    def __init__(self, context_length: int, vocab_size: int, width: int, layers: int, embed_dim: int,
                 quick_gelu: bool = True):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.transformer = Transformer([ResidualAttentionBlock(width, width // 64, quick_gelu, causal=True)
                                        for _ in range(layers)])
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, embed_dim))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=width ** -0.5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(tokens) + self.positional_embedding
        x = self.ln_final(self.transformer(x))
        eot = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        return eot @ self.text_projection


def build_clip_towers(cfg, text: bool = True, quick_gelu: bool = True) -> tuple[VisionTower, TextTower | None]:
    """Plain CLIP towers for a geometry (used for CLIP parity tests and for the zero-shot image baseline)."""
    blocks = [ResidualAttentionBlock(cfg.vision_width, cfg.vision_width // 64, quick_gelu)
              for _ in range(cfg.vision_layers)]
    visual = VisionTower(cfg.image_resolution, cfg.vision_patch_size, cfg.vision_width, cfg.embed_dim, blocks)
    tower = TextTower(cfg.context_length, cfg.vocab_size, cfg.transformer_width, cfg.transformer_layers,
                      cfg.embed_dim, quick_gelu) if text else None
    return visual, tower


# --------------------------------------------------------------------------- weights

TEXT_KEYS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")


def clip_to_ila_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CLIP's flat names (`token_embedding.weight`, `visual.*`) -> this package's (`text.*`, `visual.*`)."""
    out = {}
    for key, value in state_dict.items():
        if key.endswith(".attn_mask"):   # OpenAI's causal mask, a plain tensor attribute in TorchScript archives
            continue
        if key.startswith("visual.") or key == "logit_scale":
            out[key] = value
        elif key.startswith(TEXT_KEYS):
            out["text." + key] = value
        # anything else (attn_mask buffers, input_resolution, vocab_size ints) is not a weight
    return out


def clip_geometry(state_dict: dict[str, torch.Tensor]) -> dict:
    """Read CLIP's geometry from its weights (the way OpenAI's `build_model` does)."""
    if "visual.conv1.weight" not in state_dict:
        raise UserError("the weights have no `visual.conv1.weight`: not a CLIP ViT state dict")
    width, _, patch, _ = state_dict["visual.conv1.weight"].shape
    layers = len({k.split(".")[3] for k in state_dict if k.startswith("visual.transformer.resblocks.")})
    grid = round((state_dict["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    geometry = dict(vision_width=width, vision_layers=layers, vision_patch_size=patch,
                    image_resolution=patch * grid, embed_dim=state_dict["visual.proj"].shape[1])
    if "token_embedding.weight" in state_dict:
        vocab, t_width = state_dict["token_embedding.weight"].shape
        geometry.update(vocab_size=vocab, transformer_width=t_width,
                        context_length=state_dict["positional_embedding"].shape[0],
                        transformer_layers=len({k.split(".")[2] for k in state_dict
                                                if k.startswith("transformer.resblocks.")}))
    return geometry


def tokenize(texts: list[str] | str, context_length: int = 77) -> torch.Tensor:
    """CLIP's BPE token ids `(K, context_length)` through open_clip's tokenizer (no template added)."""
    from open_clip.tokenizer import tokenize as _tokenize

    return _tokenize([texts] if isinstance(texts, str) else list(texts), context_length=context_length)
