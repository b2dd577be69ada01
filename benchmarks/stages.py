"""``python -m benchmarks.stages``: the CPU each stage of the data path costs per megapixel, in one process.

The stream composes these stages across processes (decode tasks, model actors, the map
writer); here each runs alone on the same N x N LEVIR mosaic pair, timed with the process's
CPU clock (every thread of it: GDAL's, zarr's event loop, the map writer's), so that a
whole-run figure (``benchmarks.throughput``) can be split into what the stages cost and what
the hops between processes add. Printed side by side, per megapixel of scene:

- ``read``: both dates of each row segment (:class:`pipeline.io.read.AlignedPairReader`);
- ``input.zarr``: the segments written to the input store (:class:`pipeline.io.store.InputWriter`);
- ``the same bytes as files``: one plain file per chunk, the floor of any store on this disk;
- ``ingest records``: a completion record per chunk (:class:`pipeline.engine.workdir.Records`);
- ``map writer``: :class:`pipeline.engine.mapwriter.MapWriter` fed the null model's map in tiles,
  whole (``output.zarr``, records, statistics, COG), without ``output.zarr`` and records, and
  without the statistics too (encoding and the COG alone).
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks import nullmodel
from benchmarks.common import DEFAULT_DATA, levir_mosaic_pair, raw_decode_cpu


def _clock(fn: Callable[[], object]) -> float:
    """CPU seconds of this process (all its threads) spent in ``fn``."""
    start = time.process_time()
    fn()
    return time.process_time() - start


def ingest_stages(before: Path, after: Path, work: Path, tile: int = 512) -> dict[str, float]:
    """CPU seconds of reading, storing and recording every row segment of the pair (the stream's segments)."""
    from pipeline.engine.stream import make_segments, segment_width_for
    from pipeline.engine.workdir import Records
    from pipeline.grid import Alignment
    from pipeline.io import raster, store
    from pipeline.io.read import AlignedPairReader
    from pipeline.tiling import make_tiles

    b, a = raster.read_info(str(before)), raster.read_info(str(after))
    g = b.grid
    path = str(work / "input.zarr")
    store.create_input_store(path, g, b.count, b.dtype, tile)
    writer, records, files = store.InputWriter(path), Records(str(work / "run")), work / "chunks"
    files.mkdir()
    width = segment_width_for(b.count, np.dtype(b.dtype).itemsize, tile)
    seconds = dict.fromkeys(("read", "input.zarr", "the same bytes as files", "ingest records"), 0.0)
    with AlignedPairReader(Alignment(g, b, a, False, b.dtype)) as reader:
        for segment in make_segments(make_tiles(g.height, g.width, tile), tile, width).values():
            y0, x0 = segment[0].y0, segment[0].x0
            got: list = []
            seconds["read"] += _clock(lambda: got.extend(
                reader.read(y0, y0 + segment[0].height, x0, segment[-1].x0 + segment[-1].width)))
            image, valid = got
            seconds["input.zarr"] += _clock(lambda: writer.write(y0, x0, image, valid))

            def chunks() -> None:
                for t in segment:
                    c = slice(t.x0 - x0, t.x0 - x0 + t.width)
                    (files / f"i{t.key}").write_bytes(np.ascontiguousarray(image[..., c]).data)
                    (files / f"v{t.key}").write_bytes(np.ascontiguousarray(valid[:, c]).data)

            def record() -> None:
                for t in segment:
                    records.mark("ingest", t.key, "bench")

            seconds["the same bytes as files"] += _clock(chunks)
            seconds["ingest records"] += _clock(record)
    return seconds


def null_map(before: Path, after: Path, tile: int = 512) -> np.ndarray:
    """The null model's probabilities of the whole pair (compressing like a real model's map)."""
    import torch

    from pipeline.grid import Alignment
    from pipeline.io import raster
    from pipeline.io.read import AlignedPairReader

    b, a = raster.read_info(str(before)), raster.read_info(str(after))
    g = b.grid
    net = nullmodel.NullChange().eval()
    prob = np.empty((g.height, g.width), "float32")
    with torch.inference_mode(), AlignedPairReader(Alignment(g, b, a, False, b.dtype)) as reader:
        for y0 in range(0, g.height, tile):
            for x0 in range(0, g.width, tile):
                h, w = min(tile, g.height - y0), min(tile, g.width - x0)
                image, _ = reader.read(y0, y0 + h, x0, x0 + w)
                prob[y0:y0 + h, x0:x0 + w] = net(torch.from_numpy(image)[None])[0, 0, :h, :w].numpy()
    return prob


def writer_stages(prob: np.ndarray, grid, work: Path, tile: int = 512, per_call: int = 4) -> dict[str, float]:
    """CPU seconds of the map writer fed ``prob`` in tiles (``per_call`` a put), whole and without its parts."""
    from pipeline.config import MapSettings
    from pipeline.engine.mapwriter import MapFormat, MapWriter
    from pipeline.engine.workdir import Records
    from pipeline.io import store
    from pipeline.products.mapstats import ChangeStatistics
    from pipeline.tiling import make_tiles

    tiles = make_tiles(grid.height, grid.width, tile)
    valid = np.ones((tile, tile), bool)
    seconds = {}
    for name, keep, stats in (("map writer: whole", True, True), ("map writer: no output.zarr, no records", False, True),
                              ("map writer: encode and COG only", False, False)):
        folder = Path(tempfile.mkdtemp(dir=work))
        store.create_output_store(str(folder / "output.zarr"), grid, tile)
        probability, records = store.ProbabilityWriter(str(folder / "output.zarr")), Records(str(folder / "run"))

        def kept(results, probability=probability, records=records) -> None:
            probability.write([(t.y0, t.x0, p) for t, p, _ in results])
            for t, _, _ in results:
                records.mark("infer", t.key, "bench")

        writer = MapWriter(str(folder / "map.tif"), grid, MapFormat(MapSettings(), 0.5), {},
                           [ChangeStatistics(grid, 0.5)] if stats else [], keep=kept if keep else None)

        def feed(writer=writer) -> None:
            for i in range(0, len(tiles), per_call):
                writer.put([(t, prob[t.y0:t.y0 + t.height, t.x0:t.x0 + t.width].copy(), valid[:t.height, :t.width])
                            for t in tiles[i:i + per_call]])
            writer.close()

        seconds[name] = _clock(feed)
    return seconds


def stages(size: int, data: Path, work: Path) -> list[tuple[str, float]]:
    """Each stage's CPU milliseconds per megapixel on the ``size`` x ``size`` mosaic pair (made in ``work`` once)."""
    from pipeline.io import raster

    pair = levir_mosaic_pair(data, work, size)
    megapixels = size * size / 1e6
    scratch = Path(tempfile.mkdtemp(prefix="stages-", dir=work))
    try:
        rows = [("raw decode (rasterio, one thread)", raw_decode_cpu(*pair) * megapixels)]
        rows += list(ingest_stages(*pair, scratch).items())
        rows += list(writer_stages(null_map(*pair), raster.read_info(str(pair[0])).grid, scratch).items())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return [(name, 1000 * seconds / megapixels) for name, seconds in rows]


def main(argv: list[str] | None = None) -> None:
    """Print the stages' CPU per megapixel, and each against the raw decode."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.stages", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="the shared data folder")
    parser.add_argument("--workdir", help="where the mosaics are made (kept for the next invocation)")
    parser.add_argument("--runs", type=int, default=1, help="invocations of every stage, one row each")
    args = parser.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="changemap-stages-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"{args.size}² LEVIR mosaic pair, CPU ms per megapixel of this process (all its threads); work: {work}")
    for run in range(args.runs):
        rows = stages(args.size, Path(args.data), work)
        decode = rows[0][1]
        for name, ms in rows:
            print(f"  run {run + 1}  {name:<42} {ms:7.1f} ms/MP  {ms / decode:5.2f} x the raw decode", flush=True)


if __name__ == "__main__":
    main()
