"""Attention plugins, looked up by name, channel count first, composable (as timm's ``get_attn``).

SE: squeeze-and-excitation (Hu et al., SE, CVPR 2018); ECA: efficient channel attention
(Wang et al., ECA-Net, CVPR 2020).

A plugin maps ``(B, C, H, W)`` to ``(B, C, H, W)`` (``Parallel`` with ``concat`` to
``2C``). Each exposes ``in_channels``/``out_channels`` so a host can check that it fits
the feature it is inserted on, at build time, instead of building a silently degenerate
module (SE with reduction 16 inserted on 3 channels would get ``Linear(3, 0)``).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from models.layers.pooling import GlobalMean


class PluginError(ValueError):
    """A plugin that cannot work where it is put."""


class SEAttention(nn.Module):
    """Squeeze-and-excitation (Hu et al., SE, CVPR 2018).

    Global average pool, Linear(C, C/r), ReLU, Linear(C/r, C), sigmoid, rescale.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        if reduction < 1 or channels // reduction < 1:
            raise PluginError(
                f"SE plugin on {channels} channels with reduction {reduction} would have {channels // max(reduction, 1)} "
                f"hidden units; use a reduction of at most {channels} or insert it on a wider feature"
            )
        self.in_channels = self.out_channels = channels
        self.pool = GlobalMean()
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction, bias=False), nn.ReLU(inplace=True),
            nn.Linear(channels // reduction, channels, bias=False), nn.Sigmoid(),
        )
        for m in self.fc:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return x * self.fc(self.pool(x).flatten(1))[:, :, None, None]


class ECAAttention(nn.Module):
    """Efficient channel attention (Wang et al., ECA-Net, CVPR 2020).

    Global average pool, Conv1d across channels (kernel k), sigmoid, rescale.
    """

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise PluginError(f"ECA kernel_size must be a positive odd number, got {kernel_size}")
        self.in_channels = self.out_channels = channels
        self.pool = GlobalMean()
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if x.shape[1] != self.in_channels:
            raise PluginError(f"ECA plugin built for {self.in_channels} channels got {x.shape[1]}")
        w = torch.sigmoid(self.conv(self.pool(x).flatten(1)[:, None, :]))[:, 0]
        return x * w[:, :, None, None]


class Cascade(nn.Sequential):
    """Serial composition: each plugin takes the previous one's output."""

    def __init__(self, *plugins: nn.Module) -> None:
        if not plugins:
            raise PluginError("Cascade needs at least one plugin")
        for a, b in zip(plugins, plugins[1:]):
            check_fits(b, a.out_channels)
        super().__init__(*plugins)
        self.in_channels, self.out_channels = plugins[0].in_channels, plugins[-1].out_channels


class Parallel(nn.Module):
    """Parallel composition: every branch sees the input; outputs merged by ``add``, ``mul`` or ``concat``."""

    MERGES = ("add", "mul", "concat")

    def __init__(self, *branches: nn.Module, merge: str = "add") -> None:
        super().__init__()
        if merge not in self.MERGES:
            raise PluginError(f"merge {merge!r} is not supported; choose one of {', '.join(self.MERGES)}")
        if len(branches) < 2:
            raise PluginError("Parallel needs at least two branches")
        ins = {b.in_channels for b in branches}
        outs = [b.out_channels for b in branches]
        if len(ins) != 1:
            raise PluginError(f"parallel branches take different input channels {sorted(ins)}")
        if merge != "concat" and len(set(outs)) != 1:
            raise PluginError(f"merge {merge!r} needs equal branch outputs, got {outs} channels")
        self.branches = nn.ModuleList(branches)
        self.merge = merge
        self.in_channels = ins.pop()
        self.out_channels = sum(outs) if merge == "concat" else outs[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        outs = [b(x) for b in self.branches]
        if self.merge == "concat":
            return torch.cat(outs, dim=1)
        result = outs[0]
        for o in outs[1:]:
            result = result + o if self.merge == "add" else result * o
        return result


PLUGINS: dict[str, Callable[..., nn.Module]] = {"se": SEAttention, "eca": ECAAttention}


def check_fits(plugin: nn.Module, channels: int) -> None:
    """Fail when a plugin was built for another channel count than the feature it is put on."""
    expected = getattr(plugin, "in_channels", channels)
    if expected != channels:
        raise PluginError(
            f"plugin {type(plugin).__name__} expects {expected} channels but is inserted on a feature with "
            f"{channels} channels; build it for {channels}"
        )


def build_plugin(cfg: str | Mapping[str, Any] | nn.Module, channels: int) -> nn.Module:
    """A plugin for a ``channels``-wide feature.

    From a name (``"se"``), a config (``{"type": "se", "reduction": 8}``, ``{"type": "cascade", "plugins": [...]}``,
    ``{"type": "parallel", "plugins": [...], "merge": "concat"}``) or a built module.
    """
    if isinstance(cfg, nn.Module):
        check_fits(cfg, channels)
        return cfg
    spec = {"type": cfg} if isinstance(cfg, str) else dict(cfg)
    kind = spec.pop("type", None)
    if kind == "cascade":
        return Cascade(*_chain(spec.pop("plugins"), channels))
    if kind == "parallel":
        return Parallel(*[build_plugin(p, channels) for p in spec.pop("plugins")], merge=spec.pop("merge", "add"))
    if kind not in PLUGINS:
        raise PluginError(f"unknown plugin {kind!r}; known: {', '.join(sorted(PLUGINS) + ['cascade', 'parallel'])}")
    return PLUGINS[kind](channels, **spec)


def _chain(cfgs: list, channels: int) -> list[nn.Module]:
    built = []
    for cfg in cfgs:
        p = build_plugin(cfg, channels)
        built.append(p)
        channels = p.out_channels
    return built
