"""Heads on top of the frame embeddings: MIT, video-specific prompts, video-text logits, classifier."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ila.models.clip import QuickGELU, ResidualAttentionBlock, attend


class MIT(nn.Module):
    """Multi-frame integration transformer (X-CLIP): x + blocks(x + pos) averaged over frames.

    With `pos_embed=False` the head is order-blind (self-attention without positions, then a mean), which is
    what a fair comparison with the order-blind `mean` baseline needs.
    """

    def __init__(self, frames: int, dim: int, layers: int = 1, pos_embed: bool = True):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.zeros(1, frames, dim)) if pos_embed else None
        if pos_embed:
            nn.init.trunc_normal_(self.positional_embedding, std=0.02)
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(dim, dim // 64) for _ in range(layers)])
        for m in self.resblocks.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """`(B, T, E)` -> `(B, E)`."""
        x = frames if self.positional_embedding is None else frames + self.positional_embedding
        return (self.resblocks(x) + frames).mean(dim=1)


class CrossAttention(nn.Module):
    """Multi-head cross-attention with q/k/v projections without bias and an output projection with bias."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        b, k, dim = q.shape
        split = lambda x: x.view(b, -1, self.heads, dim // self.heads).transpose(1, 2)  # noqa: E731
        out = attend(split(self.q_proj(q)), split(self.k_proj(kv)), split(self.v_proj(kv)))
        return self.proj(out.transpose(1, 2).reshape(b, k, dim))


class PromptLayer(nn.Module):
    """text = text + CrossAttn(LN_1(text), visual); text = text + MLP(LN_3(text))."""

    def __init__(self, dim: int):
        super().__init__()
        self.cross_attn = CrossAttention(dim, dim // 64)
        self.norm1 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 4), QuickGELU(), nn.Dropout(0.0), nn.Linear(dim * 4, dim))

    def forward(self, text: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        text = text + self.cross_attn(self.norm1(text), visual)
        return text + self.mlp(self.norm3(text))


class VideoSpecificPrompt(nn.Module):
    """Video-specific prompts (X-CLIP): class-name text features attend to the clip's patch tokens and move by
    alpha * the result."""

    def __init__(self, vision_width: int, dim: int, layers: int = 2, alpha: float = 0.1):
        super().__init__()
        self.visual_ln = nn.LayerNorm(vision_width)
        self.visual_proj = nn.Parameter(torch.randn(vision_width, dim))
        self.norm = nn.LayerNorm(dim)
        self.decoder = nn.ModuleList([PromptLayer(dim) for _ in range(layers)])
        self.alpha = nn.Parameter(torch.ones(dim) * alpha)

    def forward(self, text: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """text `(B, K, E)`, patch tokens `(B, T, N, D)` -> prompted text `(B, K, E)`."""
        visual = self.norm((self.visual_ln(patches) @ self.visual_proj).mean(dim=1))
        prompt = text
        for layer in self.decoder:
            prompt = layer(prompt, visual)
        return text + self.alpha * prompt


class TextHead(nn.Module):
    """Kinetics head: MIT video feature against prompted class-name features, cosine times exp(logit_scale)."""

    def __init__(self, cfg):
        super().__init__()
        self.mit = MIT(cfg.num_frames, cfg.embed_dim, cfg.mit_layers, cfg.mit_pos_embed)
        self.prompts = VideoSpecificPrompt(cfg.vision_width, cfg.embed_dim, cfg.prompts_layers, cfg.prompts_alpha)

    def forward(self, frames: torch.Tensor, patches: torch.Tensor, text_features: torch.Tensor,
                logit_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        video = self.mit(frames)
        text = self.prompts(text_features.unsqueeze(0).expand(video.shape[0], -1, -1), patches)
        logits = torch.einsum("bd,bkd->bk", F.normalize(video, dim=-1), logit_scale.exp() * F.normalize(text, dim=-1))
        return logits, video


class ClassifierHead(nn.Module):
    """SSv2 head: MIT, L2-normalise, LayerNorm, Dropout, Linear to the classes."""

    def __init__(self, cfg):
        super().__init__()
        self.mit = MIT(cfg.num_frames, cfg.embed_dim, cfg.mit_layers, cfg.mit_pos_embed)
        self.classifier = nn.Sequential(nn.LayerNorm(cfg.embed_dim), nn.Dropout(cfg.classifier_dropout),
                                        nn.Linear(cfg.embed_dim, cfg.num_classes))

    def forward(self, frames: torch.Tensor, patches: torch.Tensor = None, text_features=None, logit_scale=None):
        logits = self.classifier(F.normalize(self.mit(frames), dim=-1))
        return logits, logits
