"""Change probability of in-memory image pairs (dataset evaluation and validation during training).

Scenes on disk go through the zarr/Ray pipeline (:mod:`pipeline.engine.stream`); dataset tiles
are small enough to hold whole, so this predicts a ``(2, C, H, W)`` array directly: in one
pass (padded to the model's size divisor), or in tiles with a halo for large images.
"""
from __future__ import annotations

import numpy as np
import torch

from models import ChangeModel
from pipeline.engine.tile_engine import TileEngine, forward_probability, normalize
from pipeline.tiling import check_scene_tiling, make_tiles

__all__ = ["forward_probability", "normalize", "predict_image"]


def _pad_to(x: np.ndarray, h: int, w: int) -> np.ndarray:
    ph, pw = h - x.shape[-2], w - x.shape[-1]
    if not ph and not pw:
        return x
    mode = "reflect" if min(x.shape[-2:]) > max(ph, pw) else "edge"
    return np.pad(x, ((0, 0),) * (x.ndim - 2) + ((0, ph), (0, pw)), mode=mode)


def predict_image(model: ChangeModel, x: np.ndarray, *, device: torch.device | str = "cpu",
                  tile: int = 0, halo: int = 64, batch_size: int = 4, statistics: str = "window") -> np.ndarray:
    """Change probability ``(H, W)`` of a normalised pair ``x (2, C, H, W)``; the model must be in eval mode.

    ``tile == 0`` (or an image no larger than one tile): one pass over the whole image,
    padded at the bottom/right to the model's size divisor. Otherwise tiles of ``tile``
    pixels are predicted from windows with ``halo`` pixels of context by the same engine as
    ``changemap run`` (:class:`pipeline.engine.tile_engine.TileEngine`): with ``statistics="window"`` each
    window is reflect-padded at the image edge and normalised by its own statistics; with
    ``"scene"`` windows are clipped at the edge and the window-dependent layers use the
    image's statistics (see :mod:`models.statistics`), which reproduces the one-pass result.
    """
    device = torch.device(device)

    def prepare(batch: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(batch)).to(device)

    h, w = x.shape[-2:]
    div = getattr(model, "size_divisor", 1)
    if not tile or (h <= tile and w <= tile):
        ph, pw = -(-h // div) * div, -(-w // div) * div
        return forward_probability(model, prepare(_pad_to(x, ph, pw)[None]))[0, :h, :w]
    if statistics == "scene":
        check_scene_tiling(tile, halo, div)
    engine = TileEngine(model, prepare, height=h, width=w, tile=tile, halo=halo, batch_size=batch_size,
                        statistics=statistics)
    tiles = make_tiles(h, w, tile)
    valid = np.ones((h, w), bool)  # in-memory pairs have no nodata

    def read(win) -> np.ndarray:
        return x[..., win.y0:win.y1, win.x0:win.x1]

    def read_valid(win) -> np.ndarray:
        return valid[win.y0:win.y1, win.x0:win.x1]

    stats = engine.measure_scene(tiles, read, read_valid, x.shape[1]) if statistics == "scene" else None
    out = np.zeros((h, w), "float32")

    def write(t, core: np.ndarray) -> None:
        out[t.y0:t.y0 + t.height, t.x0:t.x0 + t.width] = core

    engine.predict(tiles, read, write, stats)
    return out
