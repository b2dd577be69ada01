"""Tiling math: tiles partition the scene; halo windows pad exactly what lies outside."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.tiling import (
    batch_by_shape,
    by_clipped_shape,
    check_scene_tiling,
    clipped_window,
    core_offset,
    halo_window,
    make_tiles,
    pad_window,
    padded_shape,
    statistics_weights,
    window_size,
)


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


def test_clipped_windows_stop_at_the_scene_edge_and_pad_only_to_the_divisor():
    h, w = 230, 300  # padded to 232 x 304 by a one-pass run with size divisor 8
    tiles = make_tiles(h, w, 128)
    first, last = (clipped_window(t, 32, 8, h, w) for t in (tiles[0], tiles[-1]))
    assert (first.y0, first.y1, first.x0, first.x1) == (0, 160, 0, 160)
    assert (first.pad_top, first.pad_bottom, first.pad_left, first.pad_right) == (0, 0, 0, 0)
    assert (last.y0, last.y1, last.x0, last.x1) == (96, 230, 224, 300)
    assert (last.pad_top, last.pad_bottom, last.pad_left, last.pad_right) == (0, 2, 0, 4)
    for t in tiles:
        win = clipped_window(t, 32, 8, h, w)
        assert all(side % 8 == 0 for side in padded_shape(win))
        assert win.y0 % 8 == 0 and win.x0 % 8 == 0  # on the model's stride grid
        top, left = core_offset(t, win)
        assert (win.y0 + top, win.x0 + left) == (t.y0, t.x0)


def test_statistics_weights_are_the_tile_core_valid_pixels_plus_its_edge_padding():
    h, w = 230, 300
    tiles = make_tiles(h, w, 128)
    valid = np.ones((h, w), bool)
    valid[:, :10] = False  # nodata does not count
    padded = np.pad(valid, ((0, 2), (0, 4)), mode="reflect")  # what a one-pass run sees
    total = np.zeros_like(padded, dtype="float32")
    for t in tiles:
        win = clipped_window(t, 32, 8, h, w)
        weights = statistics_weights(t, win, pad_window(valid[win.y0:win.y1, win.x0:win.x1], win))
        y0, x0 = win.y0 - win.pad_top, win.x0 - win.pad_left
        total[y0:y0 + weights.shape[0], x0:x0 + weights.shape[1]] += weights
    # Every pixel of the padded scene counts once, where it is valid: the cores partition it.
    np.testing.assert_array_equal(total, padded)


def test_scene_tiling_needs_the_model_stride_grid():
    check_scene_tiling(512, 96, 8)
    with pytest.raises(ValueError, match="multiples of the model's size divisor 32"):
        check_scene_tiling(512, 48, 32)


def test_batches_hold_one_window_shape():
    items = [(1, "a"), (2, "b"), (3, "a"), (4, "a"), (5, "b")]
    batches = batch_by_shape(items, lambda i: i[1], 2)
    assert [[i for i, _ in b] for b in batches] == [[1, 3], [4], [2, 5]]


def test_tiles_ordered_by_clipped_shape_fill_batches_of_one_shape():
    h, w = 230, 300
    tiles = make_tiles(h, w, 64)
    ordered = by_clipped_shape(tiles, 16)
    assert sorted(ordered, key=lambda t: t.key) == sorted(tiles, key=lambda t: t.key)
    shapes = [padded_shape(clipped_window(t, 16, 8, h, w)) for t in ordered]
    # Each shape forms one run: batches cut from the order mix shapes only where a run ends.
    runs = [s for i, s in enumerate(shapes) if i == 0 or s != shapes[i - 1]]
    assert len(runs) == len(set(shapes))
