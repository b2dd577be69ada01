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
from models.base import change_probability
from pipeline.tiling import halo_window, make_tiles, pad_window, window_size


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


def _forward(model: ChangeModel, batch: np.ndarray, device: torch.device) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(batch)).to(device)
    amp = torch.autocast("cuda") if device.type == "cuda" else nullcontext()
    with torch.inference_mode(), amp:
        logits = model(t)
    return change_probability(logits.float()).cpu().numpy()


def predict_image(model: ChangeModel, x: np.ndarray, *, device: torch.device | str = "cpu",
                  tile: int = 0, halo: int = 64, batch_size: int = 4) -> np.ndarray:
    """Change probability ``(H, W)`` of a normalised pair ``x (2, C, H, W)``; the model must be in eval mode.

    ``tile == 0`` (or an image no larger than one tile): one pass over the whole image,
    padded at the bottom/right to the model's size divisor. Otherwise tiles of ``tile``
    pixels are predicted from windows with ``halo`` pixels of context (reflected at the
    image edge), as ``changemap run`` does.
    """
    device = torch.device(device)
    h, w = x.shape[-2:]
    div = getattr(model, "size_divisor", 1)
    if not tile or (h <= tile and w <= tile):
        ph, pw = -(-h // div) * div, -(-w // div) * div
        return _forward(model, _pad_to(x, ph, pw)[None], device)[0, :h, :w]
    size = window_size(tile, halo, div)
    out = np.zeros((h, w), "float32")
    tiles = make_tiles(h, w, tile)
    for start in range(0, len(tiles), batch_size):
        batch = tiles[start:start + batch_size]
        windows = []
        for t in batch:
            win = halo_window(t, halo, size, h, w)
            windows.append(pad_window(x[..., win.y0:win.y1, win.x0:win.x1], win))
        prob = _forward(model, np.stack(windows), device)
        for t, p in zip(batch, prob):
            out[t.y0:t.y0 + t.height, t.x0:t.x0 + t.width] = p[halo:halo + t.height, halo:halo + t.width]
    return out
