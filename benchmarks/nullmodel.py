"""A model of negligible compute whose map compresses like a real one, and the actor class that loads it.

The data path's cost is measured with it (``benchmarks.throughput``): everything a run does but
the model's own compute. Its map must compress like a real model's (most pixels far from change,
change in blobs): a map of noise makes the COG step several times dearer than any real map.
"""
from __future__ import annotations

import torch

from models.base import ChangeModel
from models.errors import UnknownModelError
from models.registry import get_entry, register_model
from pipeline.engine.predictor import TilePredictor

NULL_MODEL = "benchmark-null"
CELL = 16  # the side of the blobs, in pixels: the change is decided on a grid of this step


class NullChange(ChangeModel):
    """Change where the two dates' mean brightness differs by more than ``threshold`` on a ``CELL``-pixel grid.

    It takes the raw pixels (``takes_raw``: no normalisation, no float copy of the batch), samples
    one pixel per cell, and returns the probability itself (a steep sigmoid, constant over each
    cell), so its compute is a few hundredths of the pixels and one write of the output.
    """

    takes_raw = True
    size_divisor = CELL

    def __init__(self, in_channels: int = 3, num_classes: int = 1, threshold: float = 60.0, steepness: float = 0.2
                 ) -> None:
        super().__init__(num_classes)
        self.threshold, self.steepness = threshold, steepness
        self.register_buffer("unused", torch.zeros(1), persistent=False)  # a device to follow

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 2, C, H, W)`` raw values -> change probability ``(B, 1, H, W)``."""
        coarse = x[..., CELL // 2::CELL, CELL // 2::CELL].float()
        difference = (coarse[:, 1] - coarse[:, 0]).abs().mean(1, keepdim=True)
        p = torch.sigmoid((difference - self.threshold) * self.steepness)
        return p.repeat_interleave(CELL, -2).repeat_interleave(CELL, -1)

    def change_probability(self, logits: torch.Tensor) -> torch.Tensor:
        """The output is the probability already."""
        return logits[:, 0]


def register() -> None:
    """Register the null model in this process (the driver's checks and each actor need it)."""
    try:
        get_entry(NULL_MODEL)
    except UnknownModelError:
        register_model(NULL_MODEL, "benchmark only: negligible compute, a map that compresses like a real one")(NullChange)


class NullPredictor(TilePredictor):
    """The model actor of a benchmark run: registers the null model in its own process first."""

    def __init__(self, *args, **kwargs) -> None:
        register()
        super().__init__(*args, **kwargs)
