"""ResNet (He et al., ResNet, CVPR 2016) with MMDetection's options and correctly chained plugins.

depth 18/34/50/101/152, in/stem/base channels, num_stages, strides, dilations
(``contract_dilation`` halves the first block's), out_indices, ``pytorch`` (stride on the
3x3) or ``caffe`` (stride on the first 1x1) style, ``deep_stem`` (V1c), ``avg_down``
(V1d), frozen_stages, norm_eval, with_cp, zero_init_residual, and plugins inserted
``after_conv1``/``after_conv2``/``after_conv3`` of the blocks of chosen stages. Plugins at
one position are applied one after another, each to the previous one's output (applying
every plugin to the block's input instead would not chain them).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from models.backbones.base import Backbone, FeatureInfo
from models.layers.attention import build_plugin
from models.registry import register_backbone

POSITIONS = ("after_conv1", "after_conv2", "after_conv3")


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c)


class _PluginMixin:
    """Plugins at after_conv1/2/3 and the shared residual forward (optionally checkpointed)."""

    def _make_plugins(self, plugins: Sequence[dict], widths: dict[str, int]) -> None:
        for pos in POSITIONS:
            chain = []
            for p in plugins:
                if p["position"] != pos:
                    continue
                if pos not in widths:
                    raise ValueError(f"{type(self).__name__} has no {pos} position; use one of {sorted(widths)}")
                chain.append(build_plugin(p["cfg"], widths[pos]))
            setattr(self, f"{pos}_plugins", nn.Sequential(*chain))  # empty Sequential is the identity

    def _plug(self, x: torch.Tensor, pos: str) -> torch.Tensor:
        return getattr(self, f"{pos}_plugins")(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = checkpoint(self._inner, x, use_reentrant=False) if self.with_cp and x.requires_grad else self._inner(x)
        return self.relu(out)


class BasicBlock(_PluginMixin, nn.Module):
    """Two 3x3 convs; plugins after_conv1 / after_conv2."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None, style: str = "pytorch", with_cp: bool = False,
                 plugins: Sequence[dict] = ()) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, dilation, dilation, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = _bn(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.with_cp = with_cp
        self._make_plugins(plugins, {"after_conv1": planes, "after_conv2": planes})

    def last_norm(self) -> nn.BatchNorm2d:  # noqa: D102
        return self.bn2

    def _inner(self, x: torch.Tensor) -> torch.Tensor:
        out = self._plug(self.relu(self.bn1(self.conv1(x))), "after_conv1")
        out = self._plug(self.bn2(self.conv2(out)), "after_conv2")
        return out + (x if self.downsample is None else self.downsample(x))


class Bottleneck(_PluginMixin, nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4); plugins after_conv1 / after_conv2 / after_conv3."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None, style: str = "pytorch", with_cp: bool = False,
                 plugins: Sequence[dict] = ()) -> None:
        super().__init__()
        s1, s2 = (1, stride) if style == "pytorch" else (stride, 1)
        self.conv1 = nn.Conv2d(inplanes, planes, 1, s1, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, s2, dilation, dilation, bias=False)
        self.bn2 = _bn(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = _bn(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.with_cp = with_cp
        self._make_plugins(plugins, {"after_conv1": planes, "after_conv2": planes, "after_conv3": planes * 4})

    def last_norm(self) -> nn.BatchNorm2d:  # noqa: D102
        return self.bn3

    def _inner(self, x: torch.Tensor) -> torch.Tensor:
        out = self._plug(self.relu(self.bn1(self.conv1(x))), "after_conv1")
        out = self._plug(self.relu(self.bn2(self.conv2(out))), "after_conv2")
        out = self._plug(self.bn3(self.conv3(out)), "after_conv3")
        return out + (x if self.downsample is None else self.downsample(x))


ARCH = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)), 50: (Bottleneck, (3, 4, 6, 3)),
        101: (Bottleneck, (3, 4, 23, 3)), 152: (Bottleneck, (3, 8, 36, 3))}


@register_backbone("resnet")
class ResNet(Backbone):
    """ResNet backbone returning the stages in ``out_indices`` (see the module docstring).

    ``feature_info`` describes the returned stages; ``stage_info`` every built stage.
    """

    def __init__(self, depth: int = 18, in_channels: int = 3, stem_channels: int | None = None,
                 base_channels: int = 64, num_stages: int = 4, strides: Sequence[int] = (1, 2, 2, 2),
                 dilations: Sequence[int] = (1, 1, 1, 1), out_indices: Sequence[int] = (0, 1, 2, 3),
                 style: str = "pytorch", deep_stem: bool = False, avg_down: bool = False, frozen_stages: int = -1,
                 norm_eval: bool = False, with_cp: bool = False, zero_init_residual: bool = True,
                 plugins: Sequence[dict[str, Any]] = (), contract_dilation: bool = False) -> None:
        super().__init__()
        if depth not in ARCH:
            raise ValueError(f"invalid ResNet depth {depth}; choose one of {sorted(ARCH)}")
        if not 1 <= num_stages <= 4 or len(strides) < num_stages or len(dilations) < num_stages:
            raise ValueError(f"num_stages must be 1-4 with as many strides/dilations, got {num_stages}, "
                             f"{tuple(strides)}, {tuple(dilations)}")
        if style not in ("pytorch", "caffe"):
            raise ValueError(f"style must be 'pytorch' or 'caffe', got {style!r}")
        if max(out_indices) >= num_stages:
            raise ValueError(f"out_indices {tuple(out_indices)} name stages beyond num_stages={num_stages}")
        for p in plugins:
            if p.get("position") not in POSITIONS:
                raise ValueError(f"plugin position must be one of {POSITIONS}, got {p.get('position')!r}")
        block, layers = ARCH[depth]
        stem_channels = stem_channels or base_channels
        self.out_indices, self.frozen_stages, self.norm_eval = tuple(out_indices), frozen_stages, norm_eval
        self.deep_stem = deep_stem
        if deep_stem:
            half = stem_channels // 2
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, half, 3, 2, 1, bias=False), _bn(half), nn.ReLU(inplace=True),
                nn.Conv2d(half, half, 3, 1, 1, bias=False), _bn(half), nn.ReLU(inplace=True),
                nn.Conv2d(half, stem_channels, 3, 1, 1, bias=False), _bn(stem_channels), nn.ReLU(inplace=True))
        else:
            self.conv1 = nn.Conv2d(in_channels, stem_channels, 7, 2, 3, bias=False)
            self.bn1 = _bn(stem_channels)
            self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes, total_stride = stem_channels, 4
        self.res_layers: list[str] = []
        self.stage_info: list[FeatureInfo] = []
        for i in range(num_stages):
            planes = base_channels * 2 ** i
            stride, dilation = strides[i], dilations[i]
            stage_plugins = [p for p in plugins if p.get("stages") is None or p["stages"][i]]
            downsample = None
            if stride != 1 or inplanes != planes * block.expansion:
                parts: list[nn.Module] = []
                conv_stride = stride
                if avg_down and stride != 1:
                    parts.append(nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False))
                    conv_stride = 1
                parts += [nn.Conv2d(inplanes, planes * block.expansion, 1, conv_stride, bias=False),
                          _bn(planes * block.expansion)]
                downsample = nn.Sequential(*parts)
            first_dilation = dilation // 2 if contract_dilation and dilation > 1 else dilation
            blocks = [block(inplanes, planes, stride, first_dilation, downsample, style, with_cp, stage_plugins)]
            inplanes = planes * block.expansion
            blocks += [block(inplanes, planes, 1, dilation, None, style, with_cp, stage_plugins)
                       for _ in range(1, layers[i])]
            name = f"layer{i + 1}"
            self.add_module(name, nn.Sequential(*blocks))
            self.res_layers.append(name)
            total_stride *= stride
            self.stage_info.append(FeatureInfo(inplanes, total_stride))
        self.feature_info = [self.stage_info[i] for i in self.out_indices]
        self._init_weights(zero_init_residual)
        self._freeze()

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_norm().weight)

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        stem = [self.stem] if self.deep_stem else [self.conv1, self.bn1]
        return stem + [getattr(self, n) for n in self.res_layers[: self.frozen_stages]]

    def _freeze(self) -> None:
        for m in self._frozen_modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True) -> ResNet:
        """Keep frozen stages (and all BatchNorms with ``norm_eval``) in eval mode."""
        super().train(mode)
        self._freeze()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def stem_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and max-pool (stride 4)."""
        x = self.stem(x) if self.deep_stem else self.relu(self.bn1(self.conv1(x)))
        return self.maxpool(x)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # noqa: D102
        x = self.stem_forward(x)
        outs = []
        for i, name in enumerate(self.res_layers):
            x = getattr(self, name)(x)
            if i in self.out_indices:
                outs.append(x)
        return outs
