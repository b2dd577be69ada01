"""TinyCD's building blocks (Codegoni et al., TinyCD, 2022).

Channel-interleaving mixing, pixel-wise MLPs, masked up-sampling.

Attribute names (``_convmix``, ``_linears``, ``_mixing``, ``_linear``, ``_convolution``)
follow the reference implementation so its checkpoints load unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PixelwiseLinear(nn.Module):
    """A stack of 1x1 convs, each followed by PReLU (or ``last_activation`` on the last)."""

    def __init__(self, fin: list[int], fout: list[int], last_activation: nn.Module | None = None) -> None:
        super().__init__()
        if len(fin) != len(fout):
            raise ValueError(f"fin and fout must have the same length, got {len(fin)} and {len(fout)}")
        n = len(fin)
        self._linears = nn.Sequential(*[
            nn.Sequential(
                nn.Conv2d(fin[i], fout[i], kernel_size=1, bias=True),
                last_activation if (i == n - 1 and last_activation is not None) else nn.PReLU(),
            )
            for i in range(n)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self._linears(x)


class MixingBlock(nn.Module):
    """Interleave the channels of both dates and mix each pair with a grouped 3x3 conv."""

    def __init__(self, ch_in: int, ch_out: int) -> None:
        super().__init__()
        self._convmix = nn.Sequential(
            nn.Conv2d(ch_in, ch_out, 3, groups=ch_out, padding=1),
            nn.PReLU(),
            nn.InstanceNorm2d(ch_out),
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # noqa: D102
        # (B, C, 2, H, W) -> (B, 2C, H, W): channel order x0, y0, x1, y1, ...
        mixed = torch.stack((x, y), dim=2).flatten(1, 2)
        return self._convmix(mixed)


class MixingMaskAttentionBlock(nn.Module):
    """Mixing block followed by a pixel-wise MLP: a one-channel spatial attention mask."""

    def __init__(self, ch_in: int, ch_out: int, fin: list[int], fout: list[int]) -> None:
        super().__init__()
        self._mixing = MixingBlock(ch_in, ch_out)
        self._linear = PixelwiseLinear(fin, fout)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self._linear(self._mixing(x, y))


class UpMask(nn.Module):
    """Upsample to the skip's size, multiply by the skip mask, then depthwise + pointwise conv.

    The reference upsamples to a fixed size (64/128/256, i.e. 256-pixel inputs only);
    here the target size is the skip feature's, which is the same at 256 pixels and
    lets any input size (a multiple of 8) through. ``align_corners=True`` is the
    reference's choice; it is not translation-equivariant (the sampling grid depends on
    the input extent), so tiles of a scene then differ from a whole-scene pass.
    """

    def __init__(self, nin: int, nout: int, align_corners: bool = True) -> None:
        super().__init__()
        self.align_corners = align_corners
        self._convolution = nn.Sequential(
            nn.Conv2d(nin, nin, 3, 1, groups=nin, padding=1),
            nn.PReLU(),
            nn.InstanceNorm2d(nin),
            nn.Conv2d(nin, nout, kernel_size=1, stride=1),
            nn.PReLU(),
            nn.InstanceNorm2d(nout),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:  # noqa: D102
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=self.align_corners)
        return self._convolution(x * skip)
