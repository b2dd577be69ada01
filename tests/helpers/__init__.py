"""Helpers shared by the tests: the stores-path oracle, small rasters, servers. No test module imports another."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin

from pipeline.config import MapSettings
from pipeline.engine.mapwriter import MapFormat, publish_cog
from pipeline.grid import Alignment, Grid
from pipeline.io import store
from pipeline.io.cog import iter_blocks
from pipeline.io.read import AlignedPairReader
from pipeline.tiling import make_tiles


def ingest_pair(alignment: Alignment, path: str, tile: int) -> None:
    """The whole aligned pair into an ``input.zarr`` store, chunk by chunk, in this process (no Ray)."""
    store.create_input_store(path, alignment.grid, alignment.before.count, alignment.dtype, tile)
    writer = store.InputWriter(path)
    with AlignedPairReader(alignment) as reader:
        for t in make_tiles(alignment.grid.height, alignment.grid.width, tile):
            image, valid = reader.read(t.y0, t.y0 + t.height, t.x0, t.x0 + t.width)
            writer.write(t.y0, t.x0, image, valid)
    store.mark_complete(path)


def export_map(output_store: str, input_store: str, dest: str, *, probability: str = "uint8", mask: bool = False,
               threshold: float = 0.5, compress: str = "deflate", sinks=()) -> Grid:
    """A map written from the stores block by block (the reference the stream's writer must equal)."""
    grid = store.read_grid(output_store)
    fmt = MapFormat(MapSettings(probability=probability, mask=mask), threshold, compress)
    prob = store.open_array(output_store, store.PROBABILITY)
    valid = store.open_array(input_store, store.VALID)
    blocks = (fmt.encode((y0, x0, h, w), prob[y0:y0 + h, x0:x0 + w], valid[y0:y0 + h, x0:x0 + w], sinks)
              for y0, x0, h, w in iter_blocks(grid.height, grid.width))
    publish_cog(dest, grid, fmt, blocks)
    return grid


def make_map(spec, run, session=None, **session_options):
    """One scene's map made in this process, in ``session`` or a session of its own (Ray: the test's, if it is up)."""
    from pipeline.engine import scene, workdir
    from pipeline.session import Session

    if session is not None:
        plan = session.plan(spec, run)
        return scene.make_map(plan, workdir.paths_for(plan.spec, run), run, session)
    with Session(run, **session_options) as own:
        return make_map(spec, run, own)


def dies_once(after: int, marker: Path) -> type:
    """A model actor class whose process exits on its ``after + 1``-th batch, once per ``marker`` file.

    As a lost node would: its replacement (which finds the marker) carries on.
    """
    from pipeline.engine.predictor import TilePredictor

    class DiesOnce(TilePredictor):
        calls = 0

        def predict_chunks(self, *args, **kwargs):
            type(self).calls += 1
            if type(self).calls > after and not marker.exists():
                marker.write_text(str(os.getpid()))
                os._exit(1)
            return super().predict_chunks(*args, **kwargs)

    return DiesOnce


def predict_stores(predictor, job, tiles) -> int:
    """Predict ``tiles`` from windows read out of ``job``'s input store into its output store (in this process)."""
    engine, read, _, valid = predictor._scene(job)
    out = store.open_array(job.output_store, store.PROBABILITY, mode="r+")

    def write(t, core) -> None:
        out[t.y0:t.y0 + t.height, t.x0:t.x0 + t.width] = core

    with_data = [t for t in tiles if valid[t.y0:t.y0 + t.height, t.x0:t.x0 + t.width].any()]
    engine.predict(with_data, read, write, job.scene_stats)
    return len(tiles)


def write_tif(path, data: np.ndarray, nodata: float | None = 0, origin=(600000.0, 3340000.0), **extra) -> str:
    """A small UTM GeoTIFF of ``data`` (bands, rows, cols)."""
    profile = {"driver": "GTiff", "width": data.shape[2], "height": data.shape[1], "count": data.shape[0],
               "dtype": data.dtype.name, "crs": CRS.from_epsg(32614), "transform": from_origin(*origin, 1.0, 1.0),
               "nodata": nodata, **extra}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return str(path)


def free_port() -> int:
    """A loopback port nothing listens on (connections to it are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiled_with_corrupt_middle(folder) -> tuple[str, str]:
    """A tiled DEFLATE GeoTIFF (768 x 768, 256-pixel tiles, no nodata) whose middle tile's bytes are zeroed,
    and a clean copy: the header and the last tile read fine, the middle does not."""
    from rasterio.crs import CRS
    from rasterio.transform import from_origin

    data = np.random.default_rng(5).integers(0, 255, (3, 768, 768), dtype="uint8")
    profile = {"driver": "GTiff", "width": 768, "height": 768, "count": 3, "dtype": "uint8",
               "crs": CRS.from_epsg(32614), "transform": from_origin(600000, 3340000, 1, 1), "tiled": True,
               "blockxsize": 256, "blockysize": 256, "compress": "deflate"}
    clean, bad = folder / "clean.tif", folder / "middle_corrupt.tif"
    for path in (clean, bad):
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
    with rasterio.open(bad) as src:  # where GDAL says tile (1, 1) lies in the file
        offset = int(src.get_tag_item("BLOCK_OFFSET_1_1", "TIFF", bidx=1))
        size = int(src.get_tag_item("BLOCK_SIZE_1_1", "TIFF", bidx=1))
    raw = bytearray(bad.read_bytes())
    raw[offset + 16:offset + size - 16] = bytes(size - 32)
    bad.write_bytes(bytes(raw))
    return str(bad), str(clean)
