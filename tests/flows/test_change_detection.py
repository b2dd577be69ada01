"""The detect_changes flow end to end on real LEVIR-CD data (Prefect + zarr + Ray + TinyCD)."""
from __future__ import annotations

import numpy as np
import pytest
import rasterio

from flows.change_detection import detect_changes
from pipeline.config import MapSpec, RunOptions
from pipeline.io import cog, read
from pipeline.learn.metrics import confusion
from tests.data.make_data import reproject_to

pytestmark = pytest.mark.usefixtures("prefect_harness", "ray_local")


def _f1(map_path, label_path):
    mask, grid, valid = read.read_raster(str(map_path), band=2)
    label, label_grid, _ = read.read_raster(str(label_path))
    assert grid == label_grid
    return confusion(mask > 0, label > 127, valid).f1, valid


def test_levir_pair_gives_an_accurate_georeferenced_cog(levir_pair, tmp_path):
    before, after, label = levir_pair
    out = tmp_path / "change.tif"
    summary = detect_changes(MapSpec(before=str(before), after=str(after), mask=True),
                             RunOptions(output=str(out), keep_workdir=True, workdir=str(tmp_path / "work")))
    assert summary["tiles"] == 4 and summary["megapixels"] == pytest.approx(1.048576)
    assert summary["megapixels_per_second"] > 0 and summary["output"] == str(out)
    assert cog.cog_problems(str(out)) == []
    with rasterio.open(before) as b, rasterio.open(out) as o:
        assert (o.crs, o.transform, o.width, o.height) == (b.crs, b.transform, b.width, b.height)
        assert o.tags()["CHANGEMAP_WEIGHTS_SHA256"].startswith("743645b8")
    f1, valid = _f1(out, label)
    assert valid.all() and f1 >= 0.90, f1
    # The work folder was kept on request, with the run config and both stores.
    kept = summary["workdir"]
    assert kept and (tmp_path / "work").exists()
    assert {p.name for p in (tmp_path / "work").iterdir() for p in p.iterdir()} >= {
        "map.json", "input.zarr", "output.zarr"}


@pytest.mark.slow
def test_after_in_another_crs_is_warped_onto_before_grid(levir_pair, tmp_path):
    before, after, label = levir_pair
    utm_after = reproject_to(after, tmp_path / "after_utm14.tif", "EPSG:32614", 0.5)
    out = tmp_path / "change.tif"
    summary = detect_changes(MapSpec(before=str(before), after=str(utm_after), mask=True),
                             RunOptions(output=str(out), workdir=str(tmp_path / "w")))
    assert summary["warped_after"] and summary["workdir"] is None
    assert list((tmp_path / "w").iterdir()) == []  # intermediate stores removed after success
    with rasterio.open(before) as b, rasterio.open(out) as o:
        assert (o.crs, o.transform, o.shape) == (b.crs, b.transform, b.shape)
    f1, valid = _f1(out, label)
    assert valid.mean() > 0.97 and f1 >= 0.85, f1


def test_float_probability_output(synthetic, tmp_path):
    out = tmp_path / "p.tif"
    detect_changes(MapSpec(before=str(synthetic["before"]), after=str(synthetic["after"]), probability="float32",
                           tile=128, halo=16), RunOptions(output=str(out)))
    with rasterio.open(out) as src:
        p = src.read(1)
        assert src.dtypes == ("float32",) and src.count == 1
    assert np.isnan(p[:, :12]).all() and np.nanmin(p) >= 0 and np.nanmax(p) <= 1


@pytest.mark.slow
def test_a_zstd_map_is_a_valid_cog_of_the_same_probabilities(synthetic, tmp_path):
    spec = MapSpec(before=str(synthetic["before"]), after=str(synthetic["after"]), tile=128, halo=16, mask=True)
    maps = {}
    for compress in ("zstd", "deflate"):
        out = tmp_path / f"{compress}.tif"
        detect_changes(spec, RunOptions(output=str(out), compress=compress))
        assert cog.cog_problems(str(out)) == []
        with rasterio.open(out) as src:
            assert src.compression.name == compress
            maps[compress] = src.read(), src.dataset_mask()
    np.testing.assert_array_equal(maps["zstd"][0], maps["deflate"][0])
    np.testing.assert_array_equal(maps["zstd"][1], maps["deflate"][1])


def test_rgb_weights_run_on_four_bands(synthetic, tmp_path):
    four = str(synthetic["four_band"])
    out = tmp_path / "four.tif"
    summary = detect_changes(MapSpec(before=four, after=four, bands=[1, 2, 3, 4], tile=128, halo=16, mask=True),
                             RunOptions(output=str(out)))
    assert summary["tiles"] == 6
    mask, _, valid = read.read_raster(str(out), band=2)
    assert valid.all() and mask.sum() < 0.01 * mask.size  # identical dates: (almost) no change


@pytest.mark.slow
def test_scene_statistics_map_equals_one_pass_over_the_scene(tmp_path):
    """--statistics scene through the whole flow: the float map is the one-pass map, on BEFORE's grid."""
    from pathlib import Path

    from pipeline.learn.predict import normalize, predict_image
    from pipeline.loader import build as build_model
    from tests.data.levir_archive import _write_crop

    examples = Path(__file__).resolve().parents[2] / "examples"
    for date in ("A", "B"):  # a real 256 x 256 crop of the shipped pair, with new buildings
        _write_crop(examples / f"levir_test_1_{date}.tif", tmp_path / f"{date}.tif", 0, 768)
    out = tmp_path / "scene.tif"
    summary = detect_changes(MapSpec(before=str(tmp_path / "A.tif"), after=str(tmp_path / "B.tif"),
                                     probability="float32", tile=128, halo=96, statistics="scene"),
                             RunOptions(output=str(out)))
    assert summary["statistics"] == "scene" and summary["statistics_passes"] == 17 and summary["tiles"] == 4
    with rasterio.open(out) as o, rasterio.open(tmp_path / "A.tif") as b, rasterio.open(tmp_path / "B.tif") as a:
        assert (o.crs, o.transform, o.shape) == (b.crs, b.transform, b.shape)
        tiled, pair = o.read(1), np.stack([b.read(), a.read()])
    net, meta, _ = build_model("tinycd", "levir")
    whole = predict_image(net.eval(), normalize(pair, meta))
    np.testing.assert_allclose(tiled, whole, atol=1e-4)
