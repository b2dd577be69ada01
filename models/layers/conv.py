"""Conv building blocks shared by backbones and heads."""
from __future__ import annotations

from torch import nn


class ConvModule(nn.Sequential):
    """Conv2d (no bias) + BatchNorm + ReLU, named ``conv``/``bn``/``activate`` (mmcv's layout)."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, padding: int | None = None,
                 dilation: int = 1, groups: int = 1, act: bool = True) -> None:
        super().__init__()
        pad = (kernel // 2) * dilation if padding is None else padding
        self.conv = nn.Conv2d(cin, cout, kernel, stride, pad, dilation=dilation, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        if act:
            self.activate = nn.ReLU(inplace=True)
