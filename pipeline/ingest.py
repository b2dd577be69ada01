"""Ingest: write the aligned pair to a zarr store, one tile per chunk, in bounded memory."""
from __future__ import annotations

import dask
import dask.array as da
import numpy as np

from pipeline.grid import Alignment
from pipeline.io import store
from pipeline.io.raster import AlignedPairReader


def _read_chunk(alignment: Alignment, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
    # One reader per chunk: GDAL handles are not shared between dask threads.
    with AlignedPairReader(alignment) as reader:
        return reader.read(y0, y1, x0, x1)


def pair_as_dask(alignment: Alignment, tile: int) -> tuple[da.Array, da.Array]:
    """Lazy ``image (2, band, y, x)`` and ``valid (y, x)`` arrays, one chunk per tile."""
    g = alignment.grid
    nb = alignment.before.count
    image_rows, valid_rows = [], []
    for y0 in range(0, g.height, tile):
        y1 = min(y0 + tile, g.height)
        image_row, valid_row = [], []
        for x0 in range(0, g.width, tile):
            x1 = min(x0 + tile, g.width)
            part = dask.delayed(_read_chunk, nout=2, pure=True)(alignment, y0, y1, x0, x1)
            image_row.append(da.from_delayed(part[0], (2, nb, y1 - y0, x1 - x0), dtype=alignment.dtype))
            valid_row.append(da.from_delayed(part[1], (y1 - y0, x1 - x0), dtype=bool))
        image_rows.append(image_row)
        valid_rows.append(valid_row)
    image = da.concatenate([da.concatenate(row, axis=3) for row in image_rows], axis=2)
    valid = da.block(valid_rows)
    return image, valid


def ingest_pair(alignment: Alignment, store_path: str, tile: int, *, num_workers: int | None = None) -> None:
    """Read both dates on the output grid and write them to ``store_path`` (zarr)."""
    image, valid = pair_as_dask(alignment, tile)
    with dask.config.set(scheduler="threads", num_workers=num_workers):
        store.write_input_store(store_path, alignment.grid, image, valid, tile)
