"""Pure tiling math: core tiles on the chunk grid, halo windows and their padding."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tile:
    """One core tile: chunk (row, col) of the tile grid, its pixel offset and size."""

    row: int
    col: int
    y0: int
    x0: int
    height: int
    width: int

    @property
    def key(self) -> str:
        """Stable identifier, e.g. ``r3c7``."""
        return f"r{self.row}c{self.col}"


@dataclass(frozen=True)
class Window:
    """A read window in scene pixels: the part inside the scene plus padding to fill the rest."""

    y0: int
    y1: int
    x0: int
    x1: int
    pad_top: int
    pad_bottom: int
    pad_left: int
    pad_right: int


def make_tiles(height: int, width: int, tile: int) -> list[Tile]:
    """Tiles covering a ``height`` x ``width`` scene on a ``tile``-sized chunk grid (row-major)."""
    if tile <= 0:
        raise ValueError(f"tile size must be positive, got {tile}")
    return [
        Tile(r, c, y, x, min(tile, height - y), min(tile, width - x))
        for r, y in enumerate(range(0, height, tile))
        for c, x in enumerate(range(0, width, tile))
    ]


def window_size(tile: int, halo: int, divisor: int) -> int:
    """Side of every model input window: tile + 2 * halo, rounded up to ``divisor``."""
    side = tile + 2 * halo
    return -(-side // divisor) * divisor


def halo_window(t: Tile, halo: int, size: int, height: int, width: int) -> Window:
    """The ``size`` x ``size`` window starting ``halo`` pixels above/left of the core tile.

    The part inside the scene is read; the rest is padding (reflected by the reader).
    """
    y0, x0 = t.y0 - halo, t.x0 - halo
    y1, x1 = y0 + size, x0 + size
    cy0, cx0 = max(y0, 0), max(x0, 0)
    cy1, cx1 = min(y1, height), min(x1, width)
    return Window(cy0, cy1, cx0, cx1, cy0 - y0, y1 - cy1, cx0 - x0, x1 - cx1)


def pad_window(raw: np.ndarray, w: Window) -> np.ndarray:
    """Reflect-pad the part of a window read inside the scene (``(..., h, w)``) to the window's size."""
    pads = ((0, 0),) * (raw.ndim - 2) + ((w.pad_top, w.pad_bottom), (w.pad_left, w.pad_right))
    if not any(p for pair in pads for p in pair):
        return raw
    # numpy reflects repeatedly for pads wider than the data; a 1-pixel edge cannot reflect.
    return np.pad(raw, pads, mode="reflect" if min(raw.shape[-2:]) > 1 else "edge")
