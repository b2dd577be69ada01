"""FeatureFusionNeck: fuse the before/after pyramids level by level."""
from __future__ import annotations

import torch
from torch import nn

POLICIES = ("concat", "sum", "diff", "abs_diff")


class FeatureFusionNeck(nn.Module):
    """Fuse two feature pyramids with ``concat`` (channels double), ``sum``, ``diff`` (x2 - x1) or ``abs_diff``."""

    def __init__(self, policy: str = "concat") -> None:
        super().__init__()
        if policy not in POLICIES:
            raise ValueError(f"fusion policy {policy!r} is not supported; choose one of {', '.join(POLICIES)}")
        self.policy = policy

    def out_channels(self, channels: list[int]) -> list[int]:
        """Channels per level after fusion."""
        return [2 * c for c in channels] if self.policy == "concat" else list(channels)

    def forward(self, x1: list[torch.Tensor], x2: list[torch.Tensor]) -> list[torch.Tensor]:  # noqa: D102
        if self.policy == "concat":
            return [torch.cat([a, b], dim=1) for a, b in zip(x1, x2)]
        if self.policy == "sum":
            return [a + b for a, b in zip(x1, x2)]
        if self.policy == "diff":
            return [b - a for a, b in zip(x1, x2)]
        return [torch.abs(a - b) for a, b in zip(x1, x2)]
