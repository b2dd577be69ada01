"""What a run leaves besides the map: statistics (always), polygons, a quicklook and a STAC Item.

Statistics and polygons are computed from the blocks as the COG is written (no extra pass
over the pixels), or read back from an existing map (:func:`sinks_from_map`: an archive whose
product settings changed redoes its products, not its maps); the quicklook reads the finished
COG's overviews and decimated inputs. Every product is stamped with what defines it (the map's
settings and :class:`~pipeline.config.ProductSettings`). The polygon, quicklook and STAC modules
(shapely, pyogrio, scipy, PIL, pystac: a third of a second) are imported by the runs that ask for them.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from pipeline import storage
from pipeline.config import ProductSettings, RunOptions
from pipeline.products import mapstats
from pipeline.progress import Progress

if TYPE_CHECKING:
    from pipeline.checks import RunPlan

STAMP_KEY = "CHANGEMAP_PRODUCTS"  # a product's stamp: the map's settings and the product settings, JSON


def stamp(plan: RunPlan, products: ProductSettings) -> dict[str, Any]:
    """What defines a run's products: its map's settings and the product settings."""
    return {"map": plan.spec.stamp(), "products": products.to_dict()}


def make_sinks(plan: RunPlan, run: RunOptions, products: ProductSettings, threshold: float | None = None) -> list[Any]:
    """The block consumers a run's map feeds as it is written: statistics always, polygons with ``--vector``.

    Their threshold is the plan's (None: the map writer sets it once the scene decides it), or ``threshold``.
    """
    grid = plan.alignment.grid
    threshold = threshold if threshold is not None else plan.threshold
    sinks: list[Any] = [mapstats.ChangeStatistics(grid, threshold)]
    if run.vector:
        from pipeline.products.vectorize import Polygonizer

        sinks.append(Polygonizer(grid, threshold, min_area=products.min_area, simplify=products.simplify))
    return sinks


def sinks_from_map(plan: RunPlan, run: RunOptions, products: ProductSettings) -> list[Any]:
    """The sinks of :func:`make_sinks`, fed the blocks of the existing map at ``run.output`` (its mask band decides).

    A uint8 map holds its probabilities rounded to 1/255: polygons' mean and maximum probability
    come from those; the changed pixels are the map's own (its mask band, else the threshold).
    """
    from pipeline.io.cog import inspect_cog, read_map_blocks

    tags = inspect_cog(run.output, "change map")[2]
    sinks = make_sinks(plan, run, products, float(tags.get("CHANGEMAP_THRESHOLD", plan.threshold or 0.5)))
    for window, probability, valid, changed in read_map_blocks(run.output):
        for sink in sinks:
            sink.add(window, probability, valid, changed)
    return sinks


def finish_outputs(plan: RunPlan, run: RunOptions, products: ProductSettings, sinks: list[Any]) -> dict[str, Any]:
    """Write the outputs besides the map from the fed ``sinks`` and the finished COG.

    Returns ``{"change": statistics, "outputs": {kind: url}}``.
    """
    grid = plan.alignment.grid
    stats = sinks[0]
    threshold = stats.threshold  # the map's (the scene's own when Otsu's decided it)
    polygons = sinks[1] if len(sinks) > 1 else None
    written = {"data": run.output}
    made = stamp(plan, products)
    regions = classes = None
    if polygons is not None:
        from pipeline.io import vector

        bar = Progress("vectorize", unit="steps")
        found = polygons.finish()
        vector.write_vector(run.vector, found.geometries, found.attributes, found.crs_wkt,
                            metadata={STAMP_KEY: json.dumps(made, sort_keys=True)})
        bar(1, 1)
        regions, classes = len(found.geometries), found.size_classes()
        written["polygons"] = run.vector
    change = stats.result(regions, classes)
    change.update(model=plan.meta.model, weights_sha256=plan.meta.sha256, weights=plan.spec.weights)
    if run.stats:
        mapstats.write_json({**change, "made_with": made}, run.stats)
        written["statistics"] = run.stats
    if run.quicklook:
        from pipeline.products import quicklook

        quicklook.make_quicklook(plan.spec.before, plan.spec.after, run.output, run.quicklook,
                                 bands=plan.bands[:3] if len(plan.bands) >= 3 else plan.bands[:1],
                                 threshold=threshold, items=(plan.alignment.before.item, plan.alignment.after.item))
        written["thumbnail"] = run.quicklook
    if run.stac:
        from pipeline.products import stac

        item = stac.map_item(run.output, grid, before=plan.spec.before, after=plan.spec.after, model=plan.meta.model,
                             weights_sha256=plan.meta.sha256, threshold=threshold, stats=change,
                             assets={k: v for k, v in written.items() if k != "data"},
                             item_id=storage.basename(run.output).rsplit(".", 1)[0])
        stac.write_item(item, run.stac)
        written["stac"] = run.stac
    return {"change": change, "outputs": written}
