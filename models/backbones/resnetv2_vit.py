"""The hybrid encoder of TransUNet (Chen et al., TransUNet, 2021): ResNetV2 + ViT on the 1/16 map.

ResNetV2 with weight-standardised convs and GroupNorm (Kolesnikov et al., BiT, ECCV 2020),
a 1x1 patch embedding of its 1/16 map and a ViT (Dosovitskiy et al., ViT, ICLR 2021) over
those tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.backbones.base import Backbone, FeatureInfo
from models.registry import register_backbone


class StdConv2d(nn.Conv2d):
    """Conv2d with weight standardisation (zero mean, unit variance per output filter)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        w = self.weight
        var, mean = torch.var_mean(w, dim=(1, 2, 3), keepdim=True, unbiased=False)
        return F.conv2d(x, (w - mean) / torch.sqrt(var + 1e-5), self.bias, self.stride, self.padding,
                        self.dilation, self.groups)


class Bottleneck(nn.Module):
    """ResNetV2 unit with GroupNorm(32) and StdConv2d: 1x1, 3x3 (stride), 1x1, projected shortcut."""

    def __init__(self, cin: int, cout: int, cmid: int, stride: int = 1) -> None:
        super().__init__()
        self.gn1, self.conv1 = nn.GroupNorm(32, cmid, eps=1e-6), StdConv2d(cin, cmid, 1, bias=False)
        self.gn2, self.conv2 = nn.GroupNorm(32, cmid, eps=1e-6), StdConv2d(cmid, cmid, 3, stride, 1, bias=False)
        self.gn3, self.conv3 = nn.GroupNorm(32, cout, eps=1e-6), StdConv2d(cmid, cout, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        if stride != 1 or cin != cout:
            self.downsample = StdConv2d(cin, cout, 1, stride, bias=False)
            self.gn_proj = nn.GroupNorm(cout, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        residual = self.gn_proj(self.downsample(x)) if hasattr(self, "downsample") else x
        y = self.relu(self.gn1(self.conv1(x)))
        y = self.relu(self.gn2(self.conv2(y)))
        return self.relu(residual + self.gn3(self.conv3(y)))


@register_backbone("resnetv2")
class ResNetV2(Backbone):
    """Root conv 7x7/2 + GN + ReLU, max-pool, three blocks of bottleneck units.

    Levels (:meth:`forward_features`): the root (1/2) and each block (1/4, 1/8, 1/16).
    The unpadded 3x3 max-pool leaves the 1/4 map a pixel short; the skips are zero-padded
    at the bottom and right to their expected height and width (the next block strides
    from the unpadded map, as the reference does).

    Args:
        block_units: Units per block (R50: 3, 4, 9).
        width_factor: Multiplier of the root width 64 (a multiple of 32 after scaling, for GroupNorm).
        in_channels: Input bands.
    """

    def __init__(self, block_units: tuple[int, int, int] = (3, 4, 9), width_factor: float = 1.0,
                 in_channels: int = 3) -> None:
        super().__init__()
        w = int(64 * width_factor)
        self.width = w
        self.root = nn.Sequential(StdConv2d(in_channels, w, 7, 2, 3, bias=False), nn.GroupNorm(32, w, eps=1e-6),
                                  nn.ReLU(inplace=True))
        specs = ((w, w * 4, w, 1), (w * 4, w * 8, w * 2, 2), (w * 8, w * 16, w * 4, 2))
        self.body = nn.ModuleList()
        for n, (cin, cout, cmid, stride) in zip(block_units, specs):
            self.body.append(nn.Sequential(Bottleneck(cin, cout, cmid, stride),
                                           *[Bottleneck(cout, cout, cmid) for _ in range(n - 1)]))
        self.feature_info = [FeatureInfo(w, 2), FeatureInfo(w * 4, 4), FeatureInfo(w * 8, 8), FeatureInfo(w * 16, 16)]
        self.skip_channels = (w * 8, w * 4, w)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four levels, finest first, each of size (H / stride, W / stride)."""
        h, w = x.shape[-2:]
        x = self.root(x)
        feats = [x]
        x = F.max_pool2d(x, 3, 2, 0)
        for block, info in zip(self.body[:-1], self.feature_info[1:]):
            x = block(x)
            missing_h, missing_w = max(0, h // info.stride - x.shape[-2]), max(0, w // info.stride - x.shape[-1])
            feats.append(F.pad(x, (0, missing_w, 0, missing_h)) if missing_h or missing_w else x)
        return feats + [self.body[-1](x)]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """TransUNet's view: the 1/16 map and the skips, coarsest first (1/8, 1/4, 1/2)."""
        *skips, deep = self.forward_features(x)
        return deep, skips[::-1]


@dataclass(frozen=True)
class ViTConfig:
    """Transformer widths; ``grid`` is the token grid the position embeddings are stored for."""

    hidden: int = 768
    layers: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    grid: int = 14
    dropout: float = 0.1
    attn_dropout: float = 0.0


class ViTBlock(nn.Module):
    """LN -> multi-head self-attention -> residual; LN -> MLP(GELU) -> residual."""

    def __init__(self, c: ViTConfig) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(c.hidden, eps=1e-6)
        self.attn = nn.MultiheadAttention(c.hidden, c.heads, dropout=c.attn_dropout, batch_first=True)
        self.ffn_norm = nn.LayerNorm(c.hidden, eps=1e-6)
        self.ffn = nn.Sequential(nn.Linear(c.hidden, c.mlp_dim), nn.GELU(), nn.Dropout(c.dropout),
                                 nn.Linear(c.mlp_dim, c.hidden), nn.Dropout(c.dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        h = self.attention_norm(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.ffn(self.ffn_norm(x))


class HybridViTEncoder(nn.Module):
    """ResNetV2 features -> 1x1 patch embedding -> position embeddings -> transformer -> LN.

    ``feature_info``: the ResNetV2 skips (1/2, 1/4, 1/8) and the token map (1/16 times the
    patch embedding's stride).
    """

    def __init__(self, in_channels: int = 3, block_units: tuple[int, int, int] = (3, 4, 9),
                 width_factor: float = 1.0, vit: ViTConfig = ViTConfig()) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.hybrid = ResNetV2(block_units, width_factor, 3 if in_channels == 1 else in_channels)
        self.patch_embeddings = nn.Conv2d(self.hybrid.feature_info[-1].channels, vit.hidden, 1)
        self.position_embeddings = nn.Parameter(torch.zeros(1, vit.grid * vit.grid, vit.hidden))
        nn.init.trunc_normal_(self.position_embeddings, std=0.02)
        self.dropout = nn.Dropout(vit.dropout)
        self.blocks = nn.ModuleList([ViTBlock(vit) for _ in range(vit.layers)])
        self.encoder_norm = nn.LayerNorm(vit.hidden, eps=1e-6)
        self.grid = vit.grid
        *skips, deep = self.hybrid.feature_info
        self.feature_info = skips + [FeatureInfo(vit.hidden, deep.stride * self.patch_embeddings.stride[0])]

    def position_embedding(self, h: int, w: int) -> torch.Tensor:
        """Position embeddings for an h x w token grid (bilinear zoom of the stored grid when it differs)."""
        pe = self.position_embeddings
        if (h, w) == (self.grid, self.grid):
            return pe
        grid = pe.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)
        return grid.flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Tokens as a map ``(B, hidden, h, w)`` and the CNN skips."""
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        feat, skips = self.hybrid(x)
        tokens = self.patch_embeddings(feat)
        h, w = tokens.shape[-2:]
        t = self.dropout(tokens.flatten(2).transpose(1, 2) + self.position_embedding(h, w))
        for block in self.blocks:
            t = block(t)
        return self.encoder_norm(t).transpose(1, 2).reshape(x.shape[0], -1, h, w), skips
