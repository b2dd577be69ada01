"""Quicklooks: three panels, the tint on exactly the changed pixels, decimated and warped reads, contrast stretch."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline.io import cog, fs, raster, read
from pipeline.products.quicklook import GAP, HEADER, make_quicklook, stretch
from tests.data.make_data import CHANGES


def panels(png: str, size: tuple[int, int]) -> list[np.ndarray]:
    w, h = size
    image = np.asarray(Image.open(png).convert("RGB"))
    assert image.shape == (HEADER + h, 3 * w + 2 * GAP, 3)
    return [image[HEADER:HEADER + h, i * (w + GAP):i * (w + GAP) + w] for i in range(3)]


def tint_mask(png: str, size: tuple[int, int]) -> np.ndarray:
    """Where the third panel differs from the second: the tinted pixels."""
    _, after, tinted = panels(png, size)
    return (after != tinted).any(axis=-1)


@pytest.fixture(scope="module")
def levir_label(levir_pair):
    return read.read_raster(str(levir_pair[2]))


def test_full_resolution_tint_is_the_label(levir_pair, levir_label, tmp_path):
    before, after, label = map(str, levir_pair)
    size = make_quicklook(before, after, label, str(tmp_path / "q.png"), max_side=1024)
    assert size == (1024, 1024)
    assert np.array_equal(tint_mask(str(tmp_path / "q.png"), size), levir_label[0] > 0)  # 13,189 px


def test_decimated_tint_samples_the_label_at_pixel_centres(levir_pair, levir_label, tmp_path):
    before, after, label = map(str, levir_pair)
    size = make_quicklook(before, after, label, str(tmp_path / "q.png"), max_side=300)
    assert size == (300, 300)
    centres = np.floor((np.arange(300) + 0.5) * 1024 / 300).astype(int)  # nearest sampling
    expected = (levir_label[0] > 0)[np.ix_(centres, centres)]
    assert np.array_equal(tint_mask(str(tmp_path / "q.png"), size), expected)  # 1,118 px
    b, a, _ = panels(str(tmp_path / "q.png"), size)
    assert b.std() > 20 and a.std() > 20 and not np.array_equal(a, b)


def test_probability_cog_read_from_its_overviews(levir_pair, levir_label, tmp_path):
    before, after, _ = map(str, levir_pair)
    label, grid, valid = levir_label
    prob = (label > 0).astype(np.float32)
    cog_path = str(tmp_path / "change.tif")
    cog.write_cog(cog_path, grid, 1, "float32", (((y0, x0, h, w), prob[None, y0:y0 + h, x0:x0 + w],
                                                valid[y0:y0 + h, x0:x0 + w])
                                               for y0, x0, h, w in cog.iter_blocks(1024, 1024)))
    size = make_quicklook(before, after, cog_path, str(tmp_path / "q.png"), max_side=256, threshold=0.5)
    assert size == (256, 256)
    # The COG's one overview (512 px: overviews stop at one 512-px block) holds 2 x 2 averages, and
    # the 256-px panel samples it at pixel centres: tinted where that average exceeds 0.5.
    overview = prob.reshape(512, 2, 512, 2).mean(axis=(1, 3))
    expected = overview[1::2, 1::2] > 0.5
    assert expected.sum() == 790  # of 822 cells whose 4 x 4 average exceeds 0.5
    assert np.array_equal(tint_mask(str(tmp_path / "q.png"), size), expected)


def test_uint8_probability_map_is_thresholded_in_probability_units(levir_pair, levir_label, tmp_path):
    before, after, _ = map(str, levir_pair)
    label, grid, valid = levir_label
    prob = np.where(label > 0, 0.7, 0.3)  # 179 / 77 once scaled to 0..255
    cog_path = str(tmp_path / "change_u8.tif")
    cog.write_cog(cog_path, grid, 1, "uint8", [((0, 0, 1024, 1024), np.round(prob * 255).astype(np.uint8)[None], valid)],
                     tags={"CHANGEMAP_PROBABILITY_SCALE": "255"})
    size = make_quicklook(before, after, cog_path, str(tmp_path / "q.png"), max_side=1024, threshold=0.5)
    assert np.array_equal(tint_mask(str(tmp_path / "q.png"), size), label > 0)


def test_after_on_another_grid_is_warped_onto_befores(synthetic, tmp_path):
    info = raster.read_info(str(synthetic["before"]))
    grid = info.grid
    change = np.zeros((grid.height, grid.width), np.float32)
    for r, c, h, w in CHANGES:
        change[r:r + h, c:c + w] = 1.0
    cog_path = str(tmp_path / "change.tif")
    cog.write_cog(cog_path, grid, 1, "float32", [((0, 0, grid.height, grid.width), change[None],
                                                np.ones_like(change, bool))])
    same = make_quicklook(str(synthetic["before"]), str(synthetic["after"]), cog_path, str(tmp_path / "same.png"))
    warped = make_quicklook(str(synthetic["before"]), str(synthetic["after_4326"]), cog_path, str(tmp_path / "warp.png"))
    assert same == warped == (grid.width, grid.height)  # BEFORE's grid (300 x 230), no upsampling
    ref, got = panels(str(tmp_path / "same.png"), same)[1], panels(str(tmp_path / "warp.png"), warped)[1]
    assert not ref[:, :12].any()  # AFTER's nodata stripe is black, and stays there after the round trip
    inner = (slice(5, -5), slice(20, -5))
    assert np.corrcoef(ref[inner].ravel(), got[inner].ravel())[0, 1] > 0.95
    assert np.array_equal(tint_mask(str(tmp_path / "warp.png"), warped), change > 0.5)


def test_band_selection(levir_pair, tmp_path):
    before, after, label = map(str, levir_pair)
    rgb = panels(str(tmp_path / "rgb.png"), make_quicklook(before, after, label, str(tmp_path / "rgb.png"),
                                                           max_side=128))
    bgr = panels(str(tmp_path / "bgr.png"), make_quicklook(before, after, label, str(tmp_path / "bgr.png"),
                                                           bands=(3, 2, 1), max_side=128))
    assert np.array_equal(rgb[0][..., ::-1], bgr[0]) and np.array_equal(rgb[1][..., ::-1], bgr[1])
    grey = panels(str(tmp_path / "g.png"), make_quicklook(before, after, label, str(tmp_path / "g.png"),
                                                          bands=(2,), max_side=128))
    assert np.array_equal(grey[0][..., 0], rgb[0][..., 1]) and np.array_equal(grey[0][..., 2], rgb[0][..., 1])
    with pytest.raises(ValueError, match="1 or 3 bands"):
        make_quicklook(before, after, label, str(tmp_path / "x.png"), bands=(1, 2))


@pytest.mark.parametrize("dtype,scale", [("uint8", 1), ("uint16", 257), ("float32", 1 / 255)])
def test_stretch_spans_2_to_98_percent_whatever_the_type(dtype, scale):
    rng = np.random.default_rng(0)
    image = (rng.integers(20, 120, (3, 50, 60)) * scale).astype(dtype)
    valid = np.ones((50, 60), bool)
    valid[:5] = False
    image[:, :5] = 0 if dtype != "float32" else np.nan  # nodata: ignored, black
    (out,) = stretch([image], [valid])
    assert out.dtype == np.uint8 and out.shape == (50, 60, 3)
    assert not out[:5].any()
    for band in range(3):
        inside = out[5:, :, band]
        assert np.mean(inside == 0) == pytest.approx(0.02, abs=0.015)
        assert np.mean(inside == 255) == pytest.approx(0.02, abs=0.015)
    flat, = stretch([np.full((1, 4, 4), 7, "uint16")], [np.ones((4, 4), bool)])  # constant: no division by zero
    assert (flat == 0).all()


def test_read_decimated_grid_and_remote_png(levir_pair, tmp_path):
    before, after, label = map(str, levir_pair)
    data, valid, small = read.read_decimated(before, (1, 2, 3), 200)
    full = raster.read_info(before).grid
    assert data.shape == (3, 200, 200) and valid.all() and (small.width, small.height) == (200, 200)
    assert small.transform[0] == pytest.approx(full.transform[0] * 1024 / 200)
    assert small.bounds == pytest.approx(full.bounds)
    _, _, same = read.read_decimated(before, (1,), 4096)
    assert same == full  # never upsampled
    assert make_quicklook(before, after, label, "memory://ql/q.png", max_side=64) == (64, 64)
    fs.download("memory://ql/q.png", str(tmp_path / "q.png"))
    assert Image.open(tmp_path / "q.png").size == (3 * 64 + 2 * GAP, HEADER + 64)


def test_missing_input_is_named(levir_pair, tmp_path):
    from pipeline.errors import InputRasterError

    before, _, label = map(str, levir_pair)
    with pytest.raises(InputRasterError, match="AFTER raster .*nope.tif does not exist"):
        make_quicklook(before, str(tmp_path / "nope.tif"), label, str(tmp_path / "q.png"))
    assert not (tmp_path / "q.png").exists()
