"""benchmarks.stages: each stage does the data path's real work on the pair it is timed on."""
from __future__ import annotations

import numpy as np
import rasterio

from benchmarks import stages
from pipeline.engine.workdir import Records
from pipeline.io import raster, store
from tests.conftest import LEVIR_1024, require


def test_the_ingest_stages_store_and_record_every_chunk_of_the_pair(synthetic, tmp_path):
    before, after = synthetic["before"], synthetic["after"]
    seconds = stages.ingest_stages(before, after, tmp_path, tile=64)
    assert set(seconds) == {"read", "input.zarr", "the same bytes as files", "ingest records"}
    assert all(s >= 0 for s in seconds.values()) and seconds["read"] > 0
    grid = raster.read_info(str(before)).grid
    image = store.open_array(str(tmp_path / "input.zarr"), store.IMAGE)[:]
    with rasterio.open(before) as b, rasterio.open(after) as a:
        np.testing.assert_array_equal(image, np.stack([b.read(), a.read()]))
    chunks = -(-grid.height // 64) * -(-grid.width // 64)
    assert len(Records(str(tmp_path / "run")).done("ingest")) == chunks
    assert len(list((tmp_path / "chunks").iterdir())) == 2 * chunks  # the image's and the mask's bytes


def test_the_writer_stages_write_the_null_map_each_way(tmp_path):
    before = require(LEVIR_1024) / "test_1_A.tif"
    after = LEVIR_1024 / "test_1_B.tif"
    prob = stages.null_map(before, after, tile=256)
    assert prob.shape == (1024, 1024) and 0 < np.mean(prob > 0.5) < 0.5  # change in blobs, most pixels far from it
    grid = raster.read_info(str(before)).grid
    seconds = stages.writer_stages(prob, grid, tmp_path, tile=256)
    assert list(seconds) == ["map writer: whole", "map writer: no output.zarr, no records",
                             "map writer: encode and COG only"]
    maps = sorted(tmp_path.glob("*/map.tif"))
    assert len(maps) == 3
    for path in maps:
        with rasterio.open(path) as src:
            np.testing.assert_array_equal(src.read(1), np.rint(np.clip(prob, 0, 1) * 255).astype("uint8"))
    kept = [p for p in tmp_path.glob("*/output.zarr") if (p.parent / "run" / "records").exists()]
    assert len(kept) == 1
    np.testing.assert_array_equal(store.open_array(str(kept[0]), store.PROBABILITY)[:], prob)
