"""CLIP's image and text towers with CLIP's parameter names, and reading CLIP weights.

Tokens are batch-first, `(batch, tokens, width)`; attention runs through `F.scaled_dot_product_attention` on the
fast path (ila.models.fast). Weights load from an OpenAI CLIP file (TorchScript archive or plain state dict), an
open_clip state dict, or a pretrained name fetched through open_clip when online.
"""
from __future__ import annotations

import os
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ila.errors import UserError
from ila.models.fast import OFF, cached, linear


class QuickGELU(nn.Module):
    """CLIP's activation: x * sigmoid(1.702 x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, fused: bool) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d) [+ causal mask]) V over `(..., L, d)` heads; `fused`: one SDPA kernel."""
    if fused:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    if causal:
        future = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    return scores.softmax(dim=-1) @ v


class Attention(nn.Module):
    """Multi-head self-attention with `nn.MultiheadAttention`'s parameter layout (`in_proj_weight`, `out_proj`)."""

    fast = OFF

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, causal: bool = False, residual: torch.Tensor | None = None,
                queries: int | None = None) -> torch.Tensor:
        """Attention of `x` `(n, L, D)`, plus `residual` when given. With `queries`, only the first `queries`
        tokens ask (and come out, with the residual's first `queries` tokens), all `L` answer."""
        n, length, width = x.shape
        heads, w, b = self.heads, self.in_proj_weight, self.in_proj_bias
        if queries is None:
            qkv = linear(x, w, b, self.fast)
            q, k, v = qkv.view(n, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            q = linear(x[:, :queries], w[:width], b[:width], self.fast).view(n, queries, heads, -1).transpose(1, 2)
            kv = linear(x, w[width:], b[width:], self.fast)
            k, v = kv.view(n, length, 2, heads, width // heads).permute(2, 0, 3, 1, 4).unbind(0)
            residual = None if residual is None else residual[:, :queries]
        out = attend(q, k, v, causal, self.fast.attention).transpose(1, 2).reshape(n, q.shape[2], width)
        return linear(out, self.out_proj.weight, self.out_proj.bias, self.fast, residual=residual)


class MLP(nn.Sequential):
    """CLIP's feed-forward block: c_fc -> activation -> c_proj (plus `residual` when given).

    With `fast.fold` and QuickGELU: x sigmoid(1.702 x) = silu(1.702 x) / 1.702; the 1.702 scales the (narrow) input
    and the bias, the 1 / 1.702 folds into c_proj's weight (cached), leaving one fused SiLU between the linears.
    """

    fast = OFF

    def __init__(self, width: int, act: Callable[[], nn.Module], ratio: int = 4):
        super().__init__()
        self.c_fc = nn.Linear(width, width * ratio)
        self.gelu = act()
        self.c_proj = nn.Linear(width * ratio, width)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        fast, fc, proj = self.fast, self.c_fc, self.c_proj
        if fast.fold and isinstance(self.gelu, QuickGELU):
            bias = cached(fc, "quick.bias", (fc.bias,), lambda: fc.bias * 1.702)
            h = linear(x * 1.702, fc.weight, bias, fast, act="silu")
            weight = cached(proj, "quick.weight", (proj.weight,), lambda: proj.weight / 1.702)
            return linear(h, weight, proj.bias, fast, residual=residual)
        h = self.gelu(linear(x, fc.weight, fc.bias, fast))
        return linear(h, proj.weight, proj.bias, fast, residual=residual)


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


def read_clip_weights(source: str | os.PathLike | dict) -> dict[str, torch.Tensor]:
    """CLIP weights from a state dict, an OpenAI `.pt` (TorchScript or plain), an open_clip checkpoint, or a
    pretrained name such as `openai` / `ViT-B-32:openai` fetched through open_clip (needs the internet)."""
    if isinstance(source, dict):
        state = source
    elif os.path.exists(source):   # a file (a directory or anything else is refused with its reason)
        state = _read_clip_file(os.fspath(source))
    else:
        state = _fetch_pretrained(str(source))
    for wrapper in ("state_dict", "model"):
        if wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    return {k: v.float() if torch.is_floating_point(v) else v for k, v in state.items() if torch.is_tensor(v)}


def _read_clip_file(path: str) -> dict:
    """A CLIP weights file read without running anything in it: OpenAI's `.pt` files are TorchScript archives,
    whose parameters and buffers are taken from the archive's data (`ila.safe_load`), never through
    `torch.jit.load`; plain and open_clip files are read by the same restricted reader."""
    from ila.safe_load import FileRefused, FileUnreadable, ScriptObject, load, script_state_dict

    try:
        state = load(path)
    except FileRefused:
        raise
    except FileUnreadable as e:
        raise UserError(f"cannot read CLIP weights from {e.path}: {e.reason}") from None
    if isinstance(state, ScriptObject):
        return script_state_dict(state)
    if not isinstance(state, dict):
        raise UserError(f"cannot read CLIP weights from {path}: it holds a {type(state).__name__}, not a state dict")
    return state


def _fetch_pretrained(name: str) -> dict:
    arch, _, tag = name.rpartition(":")
    arch = arch or "ViT-B-32"
    try:
        import open_clip

        model = open_clip.create_model(arch, pretrained=tag)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"could not fetch pretrained CLIP {arch}:{tag} ({str(e).splitlines()[0][:120]}); offline, "
                        f"pass the weights file instead, e.g. ViT-B-32.pt from OpenAI or open_clip_pytorch_model.bin"
                        ) from None
    return model.state_dict()


def tokenize(texts: list[str] | str, context_length: int = 77) -> torch.Tensor:
    """CLIP's BPE token ids `(K, context_length)` through open_clip's tokenizer (no template added)."""
    from open_clip.tokenizer import tokenize as _tokenize

    return _tokenize([texts] if isinstance(texts, str) else list(texts), context_length=context_length)
