"""Tiling math: tiles partition the scene; halo windows pad exactly what lies outside."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.tiling import halo_window, make_tiles, window_size


@pytest.mark.parametrize("h,w,tile", [(230, 300, 64), (1024, 1024, 512), (50, 70, 128)])
def test_tiles_cover_every_pixel_exactly_once(h, w, tile):
    cover = np.zeros((h, w), dtype=int)
    tiles = make_tiles(h, w, tile)
    for t in tiles:
        assert t.y0 % tile == 0 and t.x0 % tile == 0  # aligned to the chunk grid
        cover[t.y0:t.y0 + t.height, t.x0:t.x0 + t.width] += 1
    assert (cover == 1).all()
    assert len({t.key for t in tiles}) == len(tiles)


def test_window_size_rounds_up_to_the_model_divisor():
    assert window_size(512, 64, 8) == 640
    assert window_size(100, 10, 32) == 128


def test_halo_window_pads_outside_the_scene():
    tiles = make_tiles(230, 300, 128)
    size = window_size(128, 16, 8)  # 160
    first = halo_window(tiles[0], 16, size, 230, 300)
    assert (first.y0, first.x0, first.pad_top, first.pad_left) == (0, 0, 16, 16)
    assert first.y1 - first.y0 + first.pad_top + first.pad_bottom == size
    last = halo_window(tiles[-1], 16, size, 230, 300)  # core 102 x 44 at (128, 256)
    assert (last.y0, last.y1, last.x0, last.x1) == (112, 230, 240, 300)
    assert (last.pad_bottom, last.pad_right) == (160 - 118, 160 - 60)
    inner = halo_window(make_tiles(1024, 1024, 256)[5], 32, 320, 1024, 1024)
    assert (inner.pad_top, inner.pad_bottom, inner.pad_left, inner.pad_right) == (0, 0, 0, 0)
