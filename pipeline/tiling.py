"""Pure tiling math: core tiles on the chunk grid, halo windows and their padding."""
from __future__ import annotations

from collections.abc import Callable
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


def pad_window(raw: np.ndarray, w: Window, nodata: bool = False) -> np.ndarray:
    """Pad the part of a window read inside the scene (``(..., h, w)``) to the window's size.

    Reflected, or with ``nodata`` NaN: beyond the scene is then no data, as a nodata pixel
    inside it is (a scene-fitted model's local mean leaves both out).
    """
    pads = ((0, 0),) * (raw.ndim - 2) + ((w.pad_top, w.pad_bottom), (w.pad_left, w.pad_right))
    if not any(p for pair in pads for p in pair):
        return raw
    if nodata:
        return np.pad(raw, pads, mode="constant", constant_values=np.nan)
    # numpy reflects repeatedly for pads wider than the data; a 1-pixel edge cannot reflect.
    return np.pad(raw, pads, mode="reflect" if min(raw.shape[-2:]) > 1 else "edge")


def clipped_window(t: Tile, halo: int, divisor: int, height: int, width: int) -> Window:
    """The window of a scene-statistics run: tile + halo, clipped at the scene edge.

    One pass over a whole scene sees no padding at the scene's edges (its convolutions
    zero-pad there) and pads only its bottom/right to the model's size divisor; these
    windows do the same, so with ``tile`` and ``halo`` multiples of ``divisor`` every
    window sits on the model's stride grid and tiles reproduce that pass.
    """
    full_h, full_w = -(-height // divisor) * divisor, -(-width // divisor) * divisor
    y0, x0 = max(t.y0 - halo, 0), max(t.x0 - halo, 0)
    y1, x1 = min(t.y0 + t.height + halo, height), min(t.x0 + t.width + halo, width)
    return Window(y0, y1, x0, x1, 0, full_h - height if y1 == height else 0, 0, full_w - width if x1 == width else 0)


def tile_window(t: Tile, tile: int, halo: int, divisor: int, height: int, width: int, clipped: bool) -> Window:
    """The window a tile is predicted from: a reflect-padded halo window, or a clipped one (scene statistics)."""
    if clipped:
        return clipped_window(t, halo, divisor, height, width)
    return halo_window(t, halo, window_size(tile, halo, divisor), height, width)


def core_offset(t: Tile, w: Window) -> tuple[int, int]:
    """Row and column of the tile's first pixel in the (padded) window array."""
    return t.y0 - w.y0 + w.pad_top, t.x0 - w.x0 + w.pad_left


def statistics_weights(t: Tile, w: Window, valid: np.ndarray) -> np.ndarray:
    """Which pixels of a clipped window's array count towards scene statistics: the tile's valid pixels.

    ``valid`` is the window's padded valid mask. A tile on the bottom/right scene edge also
    owns the divisor padding there, which one pass over the scene includes in its statistics.
    """
    top, left = core_offset(t, w)
    bottom = top + t.height + (w.pad_bottom if t.y0 + t.height == w.y1 else 0)
    right = left + t.width + (w.pad_right if t.x0 + t.width == w.x1 else 0)
    out = np.zeros(valid.shape, "float32")
    out[top:bottom, left:right] = valid[top:bottom, left:right]
    return out


def padded_shape(w: Window) -> tuple[int, int]:
    """Height and width of a window's array once padded."""
    return w.y1 - w.y0 + w.pad_top + w.pad_bottom, w.x1 - w.x0 + w.pad_left + w.pad_right


def check_scene_tiling(tile: int, halo: int, divisor: int) -> None:
    """Scene statistics need windows on the model's stride grid: tile and halo multiples of its divisor."""
    if tile % divisor or halo % divisor:
        raise ValueError(
            f"--statistics scene needs --tile and --halo to be multiples of the model's size divisor {divisor} "
            f"(got --tile {tile} --halo {halo}); round them to multiples of {divisor}"
        )


def by_clipped_shape(tiles: list[Tile], halo: int) -> list[Tile]:
    """The tiles reordered so that tiles whose clipped windows have one shape are next to each other.

    A clipped window's shape is fixed by how much halo fits on each side and by the tile's
    size, so consecutive batches of this order fill whole forward passes.
    """
    if not tiles:
        return []
    height = max(t.y0 + t.height for t in tiles)
    width = max(t.x0 + t.width for t in tiles)
    return sorted(tiles, key=lambda t: (min(t.y0, halo), min(height - t.y0 - t.height, halo), min(t.x0, halo),
                                        min(width - t.x0 - t.width, halo), t.height, t.width))


def batch_by_shape(items: list, shape_of: Callable[[object], tuple], batch_size: int) -> list[list]:
    """Batches of at most ``batch_size`` items whose windows have one shape (clipped windows differ at edges)."""
    groups: dict[tuple, list] = {}
    for item in items:
        groups.setdefault(shape_of(item), []).append(item)
    return [g[i:i + batch_size] for g in groups.values() for i in range(0, len(g), batch_size)]


def chunks_under(w: Window, tile: int) -> list[tuple[int, int]]:
    """The (row, col) of every tile chunk a window's in-scene part overlaps."""
    return [(r, c) for r in range(w.y0 // tile, (w.y1 - 1) // tile + 1)
            for c in range(w.x0 // tile, (w.x1 - 1) // tile + 1)]


def assemble(w: Window, tile: int, pieces: dict[tuple[int, int], np.ndarray]) -> np.ndarray:
    """A window's in-scene part ``(..., y1 - y0, x1 - x0)`` cut from the tile chunks that hold it.

    ``pieces`` maps (row, col) to the chunk's array ``(..., h, w)`` (edge chunks are smaller).
    """
    first = next(iter(pieces.values()))
    out = np.empty(first.shape[:-2] + (w.y1 - w.y0, w.x1 - w.x0), dtype=first.dtype)
    for r, c in chunks_under(w, tile):
        piece = pieces[(r, c)]
        cy0, cx0 = r * tile, c * tile
        y0, y1 = max(w.y0, cy0), min(w.y1, cy0 + piece.shape[-2])
        x0, x1 = max(w.x0, cx0), min(w.x1, cx0 + piece.shape[-1])
        out[..., y0 - w.y0:y1 - w.y0, x0 - w.x0:x1 - w.x0] = piece[..., y0 - cy0:y1 - cy0, x0 - cx0:x1 - cx0]
    return out
