"""Change probability of in-memory image pairs (dataset evaluation and validation during training).

Scenes on disk go through the zarr/Ray pipeline (:mod:`pipeline.inference`); dataset tiles
are small enough to hold whole, so this predicts a ``(2, C, H, W)`` array directly: in one
pass (padded to the model's size divisor), or in tiles with a halo for large images.
"""
from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch

from models import ChangeModel, WeightsMeta
from models.statistics import SceneStatistics, add_moments, measure_levels
from pipeline.tiling import (batch_by_shape, check_scene_tiling, core_offset, make_tiles, pad_window, padded_shape,
                             statistics_weights, tile_window)


def normalize(raw: np.ndarray, meta: WeightsMeta) -> np.ndarray:
    """``(..., C, H, W)`` raw values -> float32 model input ``(raw * scale - mean) / std``."""
    c = raw.shape[-3]
    mean = np.asarray(meta.mean, "float32").reshape(c, 1, 1)
    std = np.asarray(meta.std, "float32").reshape(c, 1, 1)
    return ((raw.astype("float32") * np.float32(meta.scale)) - mean) / std


def _pad_to(x: np.ndarray, h: int, w: int) -> np.ndarray:
    ph, pw = h - x.shape[-2], w - x.shape[-1]
    if not ph and not pw:
        return x
    mode = "reflect" if min(x.shape[-2:]) > max(ph, pw) else "edge"
    return np.pad(x, ((0, 0),) * (x.ndim - 2) + ((0, ph), (0, pw)), mode=mode)


def forward_probability(model: ChangeModel, x: torch.Tensor) -> np.ndarray:
    """Change probabilities ``(B, h, w)`` of a normalised batch ``x (B, 2, C, h, w)`` on the model's device.

    Runs under ``torch.inference_mode``, with autocast on CUDA.
    """
    with torch.inference_mode(), torch.autocast(x.device.type, enabled=x.device.type == "cuda"):
        logits = model(x)
    return model.change_probability(logits.float()).cpu().numpy()


def _forward(model: ChangeModel, batch: np.ndarray, device: torch.device) -> np.ndarray:
    return forward_probability(model, torch.from_numpy(np.ascontiguousarray(batch)).to(device))


def predict_image(model: ChangeModel, x: np.ndarray, *, device: torch.device | str = "cpu",
                  tile: int = 0, halo: int = 64, batch_size: int = 4, statistics: str = "window") -> np.ndarray:
    """Change probability ``(H, W)`` of a normalised pair ``x (2, C, H, W)``; the model must be in eval mode.

    ``tile == 0`` (or an image no larger than one tile): one pass over the whole image,
    padded at the bottom/right to the model's size divisor. Otherwise tiles of ``tile``
    pixels are predicted from windows with ``halo`` pixels of context, as ``changemap run``
    does: with ``statistics="window"`` each window is reflect-padded at the image edge and
    normalised by its own statistics; with ``"scene"`` windows are clipped at the edge and
    the window-dependent layers use the image's statistics (see :mod:`models.statistics`),
    which reproduces the one-pass result.
    """
    device = torch.device(device)
    h, w = x.shape[-2:]
    div = getattr(model, "size_divisor", 1)
    if not tile or (h <= tile and w <= tile):
        ph, pw = -(-h // div) * div, -(-w // div) * div
        return _forward(model, _pad_to(x, ph, pw)[None], device)[0, :h, :w]
    out = np.zeros((h, w), "float32")
    tiles = make_tiles(h, w, tile)
    if statistics == "scene":
        check_scene_tiling(tile, halo, div)
    windows = {t: tile_window(t, tile, halo, div, h, w, clipped=statistics == "scene") for t in tiles}
    batches = batch_by_shape(tiles, lambda t: padded_shape(windows[t]), batch_size)

    def stack(arr: np.ndarray, batch) -> np.ndarray:
        """Each tile's window of ``arr (..., H, W)``, padded, stacked."""
        return np.stack([pad_window(arr[..., windows[t].y0:windows[t].y1, windows[t].x0:windows[t].x1], windows[t])
                         for t in batch])

    context = nullcontext()
    if statistics == "scene":
        scene = SceneStatistics(model)
        valid = np.ones((h, w), bool)  # in-memory pairs have no nodata

        def measure(level, fixed):
            total: dict = {}
            for batch in batches:
                weights = [statistics_weights(t, windows[t], v) for t, v in zip(batch, stack(valid, batch))]
                add_moments(total, scene.collect(torch.from_numpy(stack(x, batch)).to(device),
                                                 torch.from_numpy(np.stack(weights)), level, fixed))
            return total

        context = scene.fixed(measure_levels(scene.levels(x.shape[1], div), measure))
    with context:
        for batch in batches:
            prob = _forward(model, stack(x, batch), device)
            for t, p in zip(batch, prob):
                top, left = core_offset(t, windows[t])
                out[t.y0:t.y0 + t.height, t.x0:t.x0 + t.width] = p[top:top + t.height, left:left + t.width]
    return out
