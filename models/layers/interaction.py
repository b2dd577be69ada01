"""Interaction layers between the two dates' streams (Fang et al., Changer, TGRS 2023; as in open-cd).

Each takes and returns a pair ``(x1, x2)`` of equally shaped features.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from models.layers.pooling import GlobalMean


class TwoIdentity(nn.Module):
    """No exchange."""

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        return x1, x2


def _every(p: float) -> int:
    if not 0 < p <= 1:
        raise ValueError(f"exchange fraction p must lie in (0, 1], got {p}")
    return int(1 / p)


class ChannelExchange(nn.Module):
    """Swap the channels whose index % int(1/p) == 0 between the dates."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.every = _every(p)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        swap = (torch.arange(x1.shape[1], device=x1.device) % self.every == 0).view(1, -1, 1, 1)
        return torch.where(swap, x2, x1), torch.where(swap, x1, x2)


class SpatialExchange(nn.Module):
    """Swap the columns (width index) whose index % int(1/p) == 0 between the dates."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.every = _every(p)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        swap = (torch.arange(x1.shape[-1], device=x1.device) % self.every == 0).view(1, 1, 1, -1)
        return torch.where(swap, x2, x1), torch.where(swap, x1, x2)


class AggregationDistribution(nn.Module):
    """SK-style gate: pooled sum of both dates -> 1x1 conv-BN-ReLU -> 1x1 conv to 2C -> sigmoid halves."""

    def __init__(self, channels: int, reduction: int = 16, min_channels: int = 8) -> None:
        super().__init__()
        hidden = max(channels // reduction, min_channels)
        self.squeeze = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden),
                                     nn.ReLU(inplace=True))
        self.excite = nn.Conv2d(hidden, 2 * channels, 1)
        self.channels = channels
        self.pool = GlobalMean()

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        if x1.shape[1] != self.channels:
            raise ValueError(f"Aggregation-distribution built for {self.channels} channels got {x1.shape[1]}")
        gate = torch.sigmoid(self.excite(self.squeeze(self.pool(x1 + x2))))
        g1, g2 = gate.chunk(2, dim=1)
        return x1 * g1, x2 * g2


INTERACTIONS = {"identity": TwoIdentity, "channel_exchange": ChannelExchange,
                "spatial_exchange": SpatialExchange, "aggregation_distribution": AggregationDistribution}


def build_interaction(cfg: str | Mapping[str, Any] | None, channels: int) -> nn.Module:
    """An interaction layer from None (identity), a name or ``{"type": name, **kwargs}``."""
    if cfg is None:
        return TwoIdentity()
    spec = {"type": cfg} if isinstance(cfg, str) else dict(cfg)
    kind = spec.pop("type")
    if kind not in INTERACTIONS:
        raise ValueError(f"unknown interaction {kind!r}; known: {', '.join(INTERACTIONS)}")
    if kind == "aggregation_distribution":
        spec.setdefault("channels", channels)
    return INTERACTIONS[kind](**spec)


CHANGER_EX = (None, {"type": "spatial_exchange", "p": 0.5}, {"type": "channel_exchange", "p": 0.5},
              {"type": "channel_exchange", "p": 0.5})
