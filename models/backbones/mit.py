"""Mix Transformer (MiT), the encoder of SegFormer (Xie et al., SegFormer, NeurIPS 2021), b0-b5.

Overlapping patch embeddings, efficient self-attention whose keys/values are spatially
reduced by ``sr_ratio``, Mix-FFN (1x1 conv, 3x3 depthwise conv as positional encoding,
GELU, 1x1 conv), stochastic depth rising linearly over all blocks, optional gradient
checkpointing. Sub-module names follow mmsegmentation's ``MixVisionTransformer`` after
:func:`models.weights` key mapping (``layers.{stage}.{0: patch_embed, 1: blocks, 2: norm}``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from models.backbones.base import Backbone, FeatureInfo
from models.layers.drop import StochasticDepth
from models.layers.helpers import nlc_to_nchw
from models.registry import register_backbone


@dataclass(frozen=True)
class MiTConfig:
    """Widths and depths of a MiT variant (``embed_dims`` times ``num_heads`` is each stage's width)."""

    embed_dims: int = 32
    num_heads: tuple[int, ...] = (1, 2, 5, 8)
    num_layers: tuple[int, ...] = (2, 2, 2, 2)
    patch_sizes: tuple[int, ...] = (7, 3, 3, 3)
    strides: tuple[int, ...] = (4, 2, 2, 2)
    sr_ratios: tuple[int, ...] = (8, 4, 2, 1)
    mlp_ratio: int = 4


MIT_VARIANTS = {
    "b0": MiTConfig(),
    "b1": MiTConfig(embed_dims=64),
    "b2": MiTConfig(embed_dims=64, num_layers=(3, 4, 6, 3)),
    "b3": MiTConfig(embed_dims=64, num_layers=(3, 4, 18, 3)),
    "b4": MiTConfig(embed_dims=64, num_layers=(3, 8, 27, 3)),
    "b5": MiTConfig(embed_dims=64, num_layers=(3, 6, 40, 3)),
}


class PatchEmbed(nn.Module):
    """Overlapping patch embedding: conv (kernel k, stride s, padding k // 2) then LayerNorm."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, eps: float) -> None:
        super().__init__()
        self.projection = nn.Conv2d(cin, cout, kernel, stride, kernel // 2)
        self.norm = nn.LayerNorm(cout, eps=eps)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:  # noqa: D102
        x = self.projection(x)
        hw = (x.shape[2], x.shape[3])
        return self.norm(x.flatten(2).transpose(1, 2)), hw


class EfficientAttention(nn.Module):
    """Multi-head self-attention with keys/values spatially reduced by a strided conv."""

    def __init__(self, dim: int, heads: int, sr_ratio: int, qkv_bias: bool, eps: float,
                 attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=attn_drop, bias=qkv_bias, batch_first=True)
        self.proj_drop = nn.Dropout(proj_drop)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
            self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:  # noqa: D102
        kv = x
        if self.sr_ratio > 1:
            kv = self.norm(self.sr(nlc_to_nchw(x, hw)).flatten(2).transpose(1, 2))
        return self.proj_drop(self.attn(x, kv, kv, need_weights=False)[0])


class MixFFN(nn.Module):
    """1x1 conv, 3x3 depthwise conv (positional encoding), GELU, 1x1 conv."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(dim, hidden, 1), nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden), nn.GELU(),
            nn.Dropout(drop), nn.Conv2d(hidden, dim, 1), nn.Dropout(drop),
        )

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:  # noqa: D102
        return self.layers(nlc_to_nchw(x, hw)).flatten(2).transpose(1, 2)


class MiTBlock(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + ffn(norm2(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, sr_ratio: int, drop_path: float,
                 qkv_bias: bool, eps: float, with_cp: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = EfficientAttention(dim, heads, sr_ratio, qkv_bias, eps)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.ffn = MixFFN(dim, dim * mlp_ratio)
        self.drop_path = StochasticDepth(drop_path)
        self.with_cp = with_cp

    def _forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), hw))
        return x + self.drop_path(self.ffn(self.norm2(x), hw))

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:  # noqa: D102
        if self.with_cp and x.requires_grad:
            return checkpoint(self._forward, x, hw, use_reentrant=False)
        return self._forward(x, hw)


class MixVisionTransformer(Backbone):
    """MiT encoder returning the four stage outputs (strides 4, 8, 16, 32 with the default patch strides)."""

    def __init__(self, in_channels: int = 3, config: MiTConfig = MiTConfig(), qkv_bias: bool = True,
                 drop_path_rate: float = 0.1, eps: float = 1e-6, with_cp: bool = False) -> None:
        super().__init__()
        c = config
        total = sum(c.num_layers)
        rates = torch.linspace(0, drop_path_rate, total).tolist() if total > 1 else [0.0]
        self.layers = nn.ModuleList()
        self.feature_info: list[FeatureInfo] = []
        cin, stride, k = in_channels, 1, 0
        for i, n in enumerate(c.num_layers):
            dim = c.embed_dims * c.num_heads[i]
            blocks = nn.ModuleList([
                MiTBlock(dim, c.num_heads[i], c.mlp_ratio, c.sr_ratios[i], rates[k + j], qkv_bias, eps, with_cp)
                for j in range(n)
            ])
            k += n
            stride *= c.strides[i]
            self.layers.append(nn.ModuleList([PatchEmbed(cin, dim, c.patch_sizes[i], c.strides[i], eps), blocks,
                                              nn.LayerNorm(dim, eps=eps)]))
            self.feature_info.append(FeatureInfo(dim, stride))
            cin = dim

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # noqa: D102
        outs = []
        for embed, blocks, norm in self.layers:
            x, hw = embed(x)
            for block in blocks:
                x = block(x, hw)
            x = nlc_to_nchw(norm(x), hw)
            outs.append(x)
        return outs


@register_backbone("mit")
def mit(variant: str = "b0", in_channels: int = 3, **kwargs: Any) -> MixVisionTransformer:
    """MiT-``variant`` (b0..b5); ``kwargs`` go to :class:`MixVisionTransformer`."""
    if variant not in MIT_VARIANTS:
        raise ValueError(f"unknown MiT variant {variant!r}; choose one of {sorted(MIT_VARIANTS)}")
    return MixVisionTransformer(in_channels, MIT_VARIANTS[variant], **kwargs)
