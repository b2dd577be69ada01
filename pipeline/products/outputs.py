"""What a run leaves besides the map: statistics (always), polygons, a quicklook and a STAC Item.

Statistics and polygons are computed from the blocks as the COG is written (no extra pass
over the pixels); the quicklook reads the finished COG's overviews and decimated inputs.
The polygon, quicklook and STAC modules (shapely, pyogrio, scipy, PIL, pystac: a third of a
second) are imported by the runs that ask for them.
"""
from __future__ import annotations

from typing import Any

from pipeline import storage
from pipeline.checks import RunPlan
from pipeline.config import RunOptions
from pipeline.products import mapstats
from pipeline.progress import Progress


def make_sinks(pre: RunPlan, run: RunOptions) -> list[Any]:
    """The block consumers a run's map feeds as it is written: statistics always, polygons with ``--vector``."""
    grid = pre.alignment.grid
    sinks: list[Any] = [mapstats.ChangeStatistics(grid, pre.threshold)]
    if run.vector:
        from pipeline.products.vectorize import Polygonizer

        sinks.append(Polygonizer(grid, pre.threshold, min_area=run.min_area, simplify=run.simplify))
    return sinks


def finish_outputs(pre: RunPlan, run: RunOptions, sinks: list[Any]) -> dict[str, Any]:
    """Write the outputs besides the map from the fed ``sinks`` and the finished COG.

    Returns ``{"change": statistics, "outputs": {kind: url}}``.
    """
    grid = pre.alignment.grid
    stats = sinks[0]
    polygons = sinks[1] if len(sinks) > 1 else None
    written = {"data": run.output}
    regions = classes = None
    if polygons is not None:
        from pipeline.io import vector

        bar = Progress("vectorize", unit="steps")
        found = polygons.finish()
        vector.write_vector(run.vector, found.geometries, found.attributes, found.crs_wkt)
        bar(1, 1)
        regions, classes = len(found.geometries), found.size_classes()
        written["polygons"] = run.vector
    change = stats.result(regions, classes)
    change.update(model=pre.meta.model, weights_sha256=pre.meta.sha256, weights=pre.spec.weights)
    if run.stats:
        mapstats.write_json(change, run.stats)
        written["statistics"] = run.stats
    if run.quicklook:
        from pipeline.products import quicklook

        quicklook.make_quicklook(pre.spec.before, pre.spec.after, run.output, run.quicklook, bands=pre.bands[:3]
                                 if len(pre.bands) >= 3 else pre.bands[:1], threshold=pre.threshold)
        written["thumbnail"] = run.quicklook
    if run.stac:
        from pipeline.products import stac

        item = stac.map_item(run.output, grid, before=pre.spec.before, after=pre.spec.after, model=pre.meta.model,
                             weights_sha256=pre.meta.sha256, threshold=pre.threshold, stats=change,
                             assets={k: v for k, v in written.items() if k != "data"},
                             item_id=storage.basename(run.output).rsplit(".", 1)[0])
        stac.write_item(item, run.stac)
        written["stac"] = run.stac
    return {"change": change, "outputs": written}
