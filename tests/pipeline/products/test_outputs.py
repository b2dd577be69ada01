"""A run's take-away outputs through the CLI on the shipped LEVIR-CD pair: polygons, statistics, quicklook, STAC."""
from __future__ import annotations

import json
from pathlib import Path

import pyogrio
import pytest
from scipy import ndimage

from pipeline.cli import main
from pipeline.io import read

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness", "ray_local")
def test_run_writes_polygons_statistics_quicklook_and_stac(tmp_path, capsys):
    out = tmp_path / "change.tif"
    paths = {k: tmp_path / n for k, n in (("vector", "changes.gpkg"), ("stats", "stats.json"),
                                         ("quicklook", "quicklook.png"), ("stac", "item.json"))}
    args = ["run", str(EXAMPLES / "levir_test_1_A.tif"), str(EXAMPLES / "levir_test_1_B.tif"), "-o", str(out),
            "--mask", "--tile", "192", "--halo", "32", "--json"] + [a for k, p in paths.items() for a in (f"--{k}", str(p))]
    assert main(args) == 0
    printed = capsys.readouterr().out
    summary = json.loads(next(line for line in printed.splitlines() if line.startswith("{")))
    mask, _, valid = read.read_raster(str(out), band=2)
    labels, count = ndimage.label(mask > 0, structure=ndimage.generate_binary_structure(2, 1))
    # Polygons: one per 4-connected changed region, also for regions across the 192-px tile borders.
    info = pyogrio.read_info(str(paths["vector"]))
    assert info["features"] == count > 0 and "4326" in info["crs"]
    _, _, _, fields = pyogrio.raw.read(str(paths["vector"]))
    area = fields[0]
    spans = [s for s in ndimage.find_objects(labels) if any(sl.start < b <= sl.stop - 1 for sl in s
                                                               for b in range(192, 1024, 192))]
    assert spans, "no changed region straddles a tile border on this pair"
    # Statistics: the changed area equals the polygons' total, and the summary carries it.
    stats = json.loads(paths["stats"].read_text())
    assert stats["regions"] == count and stats["pixels"]["changed"] == int((mask > 0).sum())
    assert area.sum() == pytest.approx(stats["changed_area_km2"] * 1e6, rel=5e-3)
    assert summary["change"]["changed_area_km2"] == pytest.approx(stats["changed_area_km2"])
    # Quicklook: three panels side by side, at most 1024 px each.
    from PIL import Image

    with Image.open(paths["quicklook"]) as png:
        assert png.width >= 3 * 1024 and png.height <= 1024 + 64
    # STAC: an item whose assets are the outputs.
    item = json.loads(paths["stac"].read_text())
    assert item["type"] == "Feature" and {"data", "polygons", "statistics", "thumbnail"} <= set(item["assets"])
    assert item["properties"]["changemap:model"] == "tinycd"
    assert "changed:" in printed and f"{count} regions" in printed
    # What the seconds before the flow went to (the harness's API and Ray are already running: only the actors start).
    startup = summary["startup_seconds"]
    assert set(startup) == {"before the checks", "checks", "ray", "model actors"}
    assert startup["model actors"] > 0 and startup["checks"] > 0 and 0 <= startup["ray"] < 1, startup


def test_a_bad_vector_extension_is_refused_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "change.tif"
    code = main(["run", str(EXAMPLES / "levir_test_1_A.tif"), str(EXAMPLES / "levir_test_1_B.tif"), "-o", str(out),
                 "--vector", str(tmp_path / "changes.shp")])
    assert code == 2 and ".gpkg, .parquet, .fgb, .geojson" in capsys.readouterr().err and not out.exists()
