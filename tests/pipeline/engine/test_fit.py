"""The fit step: scene-fitted models through the whole pipeline, Otsu's threshold over the scene, any model."""
from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio

from pipeline.config import MapSpec, RunOptions
from pipeline.engine.fit import sample_windows
from pipeline.learn.evaluate import evaluate_pair
from pipeline.learn.labels import LabelValues
from tests import helpers
from tests.conftest import SHARED_DATA, require

TAIZHOU = SHARED_DATA / "landsat-taizhou"
SLOVENIA = SHARED_DATA / "sentinel2-slovenia"


def _read(path, band=1):
    with rasterio.open(path) as src:
        return src.read(band), src.dataset_mask() > 0, src.tags()


def test_the_sample_is_reproducible_stratified_and_aligned():
    small = sample_windows(800, 1000, target=1 << 20)
    assert sum((y1 - y0) * (x1 - x0) for y0, y1, x0, x1 in small) == 800 * 1000  # a small scene is read whole
    big = sample_windows(10980, 10980, target=1 << 20, side=256)
    assert big == sample_windows(10980, 10980, target=1 << 20, side=256)  # seeded
    assert sample_windows(10980, 10980, target=1 << 20, side=256, seed=1) != big
    k = int(len(big) ** 0.5)
    assert k * k == len(big) and 2 * (1 << 20) <= len(big) * 256 * 256 < 3 * (1 << 20)
    for y0, y1, x0, x1 in big:
        assert y0 % 256 == 0 and x0 % 256 == 0 and 0 < y1 - y0 <= 256 and 0 < x1 - x0 <= 256
        assert y1 <= 10980 and x1 <= 10980
    # one window in each stratum of the k x k grid
    cells = {((y0 + y1) // 2 * k // 10980, (x0 + x1) // 2 * k // 10980) for y0, y1, x0, x1 in big}
    assert len(cells) == k * k


@pytest.mark.slow
@pytest.mark.parametrize("model", ["cva", "irmad"])
def test_a_scene_fitted_map_is_the_model_applied_to_the_whole_scene_whatever_the_tiles(model, tmp_path, ray_local):
    """Landsat Taizhou (6 bands): tiles of 64 and 128 with halos of 8 and 32 make the same scores, equal to the fit
    applied to the whole scene at once; the threshold is Otsu's over the scene, stamped with the fit.

    Both maps are made in one session, as an archive's are: the second by the same actors and map writer."""
    from pipeline.session import Session

    before, after = str(require(TAIZHOU) / "A.tif"), str(TAIZHOU / "B.tif")
    scores = {}
    with Session() as session:
        for tile, halo in ((64, 8), (128, 32)):
            run = RunOptions(output=str(tmp_path / f"{model}-{tile}.tif"), workdir=str(tmp_path / f"w{tile}"))
            made = helpers.make_map(MapSpec(before=before, after=after, model=model, tile=tile, halo=halo,
                                            probability="float32", mask=True), run, session)
            scores[tile], valid, tags = _read(run.output)
            mask, _, _ = _read(run.output, 2)
            fit = json.loads(tags["CHANGEMAP_FIT"])
            assert fit["method"] == model and fit["in_channels"] == 6 and fit["n_samples"] == 400 * 400
            assert float(tags["CHANGEMAP_THRESHOLD"]) == pytest.approx(made.threshold) == pytest.approx(fit["threshold"])
            assert fit["threshold_method"] == "otsu over the scene's scores"
            np.testing.assert_array_equal(mask[valid] > 0, scores[tile][valid] > made.threshold)
    assert np.max(np.abs(scores[64] - scores[128])) <= 1e-4
    # the same fit applied to the whole scene in one piece
    import torch

    from models.fitting import FitReport
    from pipeline import loader

    net, _ = loader.build_loaded(model, None, {"in_channels": 6})
    scene = net.for_scene(FitReport.from_dict(fit))
    with rasterio.open(before) as a, rasterio.open(after) as b:
        x = torch.from_numpy(np.stack([a.read(), b.read()]).astype("float32"))[None]
    with torch.inference_mode():
        whole = scene.change_probability(scene(x))[0].numpy()
    np.testing.assert_allclose(scores[128], whole, atol=1e-5)


@pytest.mark.slow
def test_on_landsat_taizhou_the_better_method_scores_f1_090(tmp_path, ray_local):
    """F1 over the labelled pixels (255: unlabeled), the threshold automatic, nothing tuned for the scene."""
    before, after, label = (str(require(TAIZHOU) / n) for n in ("A.tif", "B.tif", "label.tif"))
    f1 = {}
    for model in ("cva", "irmad"):
        run = RunOptions(output=str(tmp_path / f"{model}.tif"), workdir=str(tmp_path / "w"))
        helpers.make_map(MapSpec(before=before, after=after, model=model, mask=True), run)
        f1[model] = evaluate_pair(run.output, label, label_values=LabelValues(0, 1, 255)).f1
    assert max(f1.values()) >= 0.90 and min(f1.values()) >= 0.85, f1


@pytest.mark.slow
def test_a_nodata_stripe_is_masked_and_leaves_the_fit_unchanged(synthetic, tmp_path, ray_local):
    """The uint16 pair's AFTER has a 12-px nodata stripe: the map masks it, and the scores of the other pixels equal
    those of the same pair cropped to its valid part (the fit saw the same pixels)."""
    cropped = {}
    for name in ("before_uint16", "after_uint16"):
        with rasterio.open(synthetic[name]) as src:
            profile = src.profile
            window = rasterio.windows.Window(12, 0, src.width - 12, src.height)
            profile.update(width=src.width - 12, transform=src.window_transform(window))
            cropped[name] = tmp_path / f"{name}_cropped.tif"
            with rasterio.open(cropped[name], "w", **profile) as dst:
                dst.write(src.read(window=window))
    maps = {}
    for key, pair in (("full", (synthetic["before_uint16"], synthetic["after_uint16"])),
                      ("cropped", (cropped["before_uint16"], cropped["after_uint16"]))):
        run = RunOptions(output=str(tmp_path / f"{key}.tif"), workdir=str(tmp_path / f"w-{key}"))
        helpers.make_map(MapSpec(before=str(pair[0]), after=str(pair[1]), model="irmad", tile=64, halo=16,
                                 probability="float32"), run)
        maps[key] = _read(run.output)
    score, valid, tags = maps["full"]
    assert not valid[:, :12].any() and valid[:, 12:].all()
    assert json.loads(tags["CHANGEMAP_FIT"])["n_samples"] == 230 * 288
    assert np.max(np.abs(score[:, 12:] - maps["cropped"][0])) <= 1e-3
    assert json.loads(tags["CHANGEMAP_FIT"])["parameters"] == json.loads(maps["cropped"][2]["CHANGEMAP_FIT"])["parameters"]


@pytest.mark.parametrize("model", ["cva", "irmad"])
def test_a_13_band_float32_sentinel2_pair_runs(model, tmp_path, ray_local):
    """The clear dates of the Slovenia Sentinel-2 L1C pair (13 float32 bands, 10 m): every band by default."""
    before, after = str(require(SLOVENIA) / "S2L1C_2015-07-11_ref4.tif"), str(SLOVENIA / "S2L1C_2015-09-09_ref2.tif")
    run = RunOptions(output=str(tmp_path / f"{model}.tif"), workdir=str(tmp_path / "w"))
    made = helpers.make_map(MapSpec(before=before, after=after, model=model, probability="float32"), run)
    score, valid, tags = _read(run.output)
    fit = json.loads(tags["CHANGEMAP_FIT"])
    assert fit["in_channels"] == 13 and np.isfinite(score[valid]).all() and valid.all()
    assert 0.0 < (score[valid] > made.threshold).mean() < 0.6  # seasonal change: some, not everything
    assert made.fit["method"] == model and made.fit["seconds"] > 0


def test_constant_and_duplicated_bands_are_dropped_and_said(synthetic, tmp_path, ray_local):
    """A 5-band pair whose 4th band is constant and 5th a copy of the 1st: the map runs, the fit says why."""
    paths = {}
    for name in ("before_uint16", "after_uint16"):
        with rasterio.open(synthetic[name]) as src:
            data, profile = src.read(), src.profile
        data = np.concatenate([data, np.full_like(data[:1], 1000), data[:1]])
        profile.update(count=5)
        paths[name] = tmp_path / f"{name}_5.tif"
        with rasterio.open(paths[name], "w", **profile) as dst:
            dst.write(data)
    run = RunOptions(output=str(tmp_path / "five.tif"), workdir=str(tmp_path / "w"))
    made = helpers.make_map(MapSpec(before=str(paths["before_uint16"]), after=str(paths["after_uint16"]), model="irmad",
                                    tile=64, halo=16, probability="float32"), run)
    score, valid, _ = _read(run.output)
    assert np.isfinite(score[valid]).all()
    dropped = {d["band"]: d["reason"] for d in made.fit["dropped_bands"]}
    assert set(dropped) == {3, 4} and "constant" in dropped[3] and "collinear" in dropped[4]


@pytest.mark.slow
def test_threshold_otsu_works_for_a_deep_model(levir_pair, tmp_path, ray_local):
    """TinyCD with --threshold otsu: the threshold is Otsu's over the map's own probabilities, and the mask band,
    statistics and polygons all follow it."""
    from models.fitting import otsu_from_histogram

    before, after, _ = map(str, levir_pair)
    run = RunOptions(output=str(tmp_path / "otsu.tif"), workdir=str(tmp_path / "w"), vector=str(tmp_path / "p.gpkg"))
    made = helpers.make_map(MapSpec(before=before, after=after, threshold="otsu", probability="float32", mask=True,
                                    tile=512, halo=32), run)
    score, valid, tags = _read(run.output)
    mask, _, _ = _read(run.output, 2)
    counts, edges = np.histogram(score[valid], bins=1024, range=(0.0, 1.0))
    expected = otsu_from_histogram(counts, edges)
    assert made.threshold == pytest.approx(expected, abs=1 / 1024) and 0.0 < made.threshold < 1.0
    assert float(tags["CHANGEMAP_THRESHOLD"]) == pytest.approx(made.threshold)
    np.testing.assert_array_equal(mask[valid] > 0, score[valid] > made.threshold)
    stats = made.sinks[0].result()
    assert stats["pixels"]["changed"] == int((score[valid] > made.threshold).sum())
