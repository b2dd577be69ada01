"""An archive on local disk: a re-run with other product settings remakes the products from the kept maps."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pyogrio
import pytest

from flows.archive import process_archive
from pipeline.config import ArchiveOptions, MapSettings, ProductSettings, RunOptions
from pipeline.io import vector
from pipeline.products.outputs import STAMP_KEY

pytestmark = pytest.mark.usefixtures("prefect_harness", "ray_local")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"  # the bundled LEVIR-CD sample pair


def _archive(tmp_path, products: ProductSettings):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"id,before,after\nsyn,{EXAMPLES / 'levir_test_1_A.tif'},{EXAMPLES / 'levir_test_1_B.tif'}\n")
    state = process_archive(ArchiveOptions(manifest=str(manifest), output_prefix=str(tmp_path / "maps"),
                                           vector_format="gpkg", stac=True),
                            MapSettings(model="tinycd", tile=512, halo=32), RunOptions(batch_size=2), products,
                            return_state=True)
    return state.result(raise_on_failure=False)


def _areas(path) -> list[float]:
    meta, _, _, fields = pyogrio.raw.read(path)
    return list(fields[list(meta["fields"]).index("area_m2")])


@pytest.mark.slow
def test_a_rerun_with_only_min_area_changed_redoes_the_polygons_and_nothing_else(tmp_path):
    maps = tmp_path / "maps"
    first = _archive(tmp_path, ProductSettings())
    assert first["counts"]["succeeded"] == 1 and first["tiles_inferred"] > 0
    map_before = os.stat(maps / "syn.tif")
    areas = sorted(_areas(maps / "syn.gpkg"))
    assert len(areas) >= 2
    cut = (areas[0] + areas[-1]) / 2  # drops the smaller regions, keeps the largest
    second = _archive(tmp_path, ProductSettings(min_area=cut))
    assert second["counts"] == {"succeeded": 0, "failed": 0, "skipped": 0, "updated": 1, "unpaired": 0}
    assert second["tiles_inferred"] == 0  # no tile was predicted again
    after = os.stat(maps / "syn.tif")
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (map_before.st_ino, map_before.st_mtime_ns,
                                                                 map_before.st_size)  # the map is the same file
    kept = sorted(_areas(maps / "syn.gpkg"))
    assert kept == [a for a in areas if a >= cut] and len(kept) < len(areas)
    stamp = json.loads(vector.read_metadata(str(maps / "syn.gpkg"))[STAMP_KEY])
    assert stamp["products"] == {"min_area": cut, "simplify": 0.0}
    stats = json.loads((maps / "syn.stats.json").read_text())
    assert stats["regions"] == len(kept) and stats["made_with"]["products"]["min_area"] == cut
    assert stats["changed_area_km2"] == pytest.approx(first["pairs"][0]["changed_area_km2"], abs=1e-6)
    item = json.loads((maps / "syn" / "syn.json").read_text())
    assert item["properties"]["changemap:regions"] == len(kept)  # the STAC Item carries the new statistics
    # The same settings again: everything is current, nothing is done.
    third = _archive(tmp_path, ProductSettings(min_area=cut))
    assert third["counts"]["skipped"] == 1 and third["counts"]["updated"] == 0
