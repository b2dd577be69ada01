"""A quicklook PNG of a change map: BEFORE, AFTER, and AFTER with the changed pixels tinted.

Every panel is a decimated read (:func:`pipeline.io.read.read_decimated`: GDAL's reduced
``RasterIO``, from overviews when the file has them), so a scene of any size costs at most
``max_side``² pixels per panel. AFTER and the change mask are put on BEFORE's grid.

Layout: a caption strip of :data:`HEADER` pixels, then the three panels left to right, each
``(width, height)`` as returned, :data:`GAP` pixels apart; panel ``i`` starts at column
``i * (width + GAP)``, row :data:`HEADER`.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from pipeline.io import fs, raster, read

HEADER, GAP = 16, 8
TINT, ALPHA = (255, 0, 0), 0.5
PERCENTILES = (2.0, 98.0)
SCALE_TAG = "CHANGEMAP_PROBABILITY_SCALE"  # stamped by pipeline.engine.mapwriter: probability = value / scale


def stretch(images: list[np.ndarray], valids: list[np.ndarray]) -> list[np.ndarray]:
    """A per-band 2-98 % percentile stretch to uint8, shared by the images so brightness changes show.

    Works for any numeric input (uint8, uint16, float); pixels outside ``valid`` are ignored and
    come out black.

    Args:
        images: ``(C, h, w)`` arrays with the same bands.
        valids: ``(h, w)`` masks, True where an image has data.

    Returns:
        ``(h, w, C)`` uint8 arrays.
    """
    out = [np.zeros(img.shape[1:] + img.shape[:1], dtype=np.uint8) for img in images]
    for band in range(images[0].shape[0]):
        values = np.concatenate([img[band][ok].astype(np.float64) for img, ok in zip(images, valids)])
        values = values[np.isfinite(values)]
        if not values.size:
            continue
        lo, hi = np.percentile(values, PERCENTILES)
        span = hi - lo if hi > lo else 1.0
        for img, ok, dst in zip(images, valids, out):
            scaled = np.clip((img[band].astype(np.float64) - lo) / span, 0, 1) * 255
            dst[..., band] = np.where(ok, np.nan_to_num(np.round(scaled)), 0).astype(np.uint8)
    return out


def make_quicklook(before: str, after: str, change: str, dest_png: str, *, bands: tuple[int, ...] = (1, 2, 3),
                   max_side: int = 1024, threshold: float = 0.5, items: tuple[Any, Any] = (None, None)
                   ) -> tuple[int, int]:
    """Write a side-by-side PNG: BEFORE | AFTER | AFTER with changed pixels tinted red.

    Args:
        before: BEFORE raster (its grid is the quicklook's).
        after: AFTER raster (warped onto BEFORE's grid when it differs).
        change: the change-probability COG, or any mask raster (first band; changed where the
            value exceeds ``threshold`` times the file's ``CHANGEMAP_PROBABILITY_SCALE`` tag,
            255 for a uint8 map, else 1: 0/255 labels work with 0.5). Decimated by nearest
            sampling (a COG's overviews hold averaged probabilities).
        dest_png: path or fsspec URL of the PNG, written atomically.
        bands: the three (or one, shown grey) 1-based bands to show.
        max_side: the longest side of each panel in pixels.
        threshold: probability above which a pixel is tinted.
        items: the STAC Item dates BEFORE and AFTER stand for, when they are items (their chosen bands).

    Returns:
        ``(width, height)`` of each panel.
    """
    if len(bands) not in (1, 3):
        raise ValueError(f"a quicklook shows 1 or 3 bands, got {len(bands)}: {bands}")
    grid = items[0].grid if items[0] is not None else raster.read_info(before, "BEFORE").grid
    img_b, ok_b, small = read.read_decimated(before, bands, max_side, role="BEFORE", item=items[0])
    img_a, ok_a, _ = read.read_decimated(after, bands, max_side, grid=grid, role="AFTER", item=items[1])
    prob, ok_c, _ = read.read_decimated(change, (1,), max_side, grid=grid, resampling="nearest", role="change")
    rgb_b, rgb_a = (np.repeat(x, 3, axis=2) if x.shape[2] == 1 else x for x in stretch([img_b, img_a], [ok_b, ok_a]))
    scale = float(read.read_metadata(change, "change")[0].get(SCALE_TAG, 1))
    changed = ok_c & (prob[0] > threshold * scale)
    tinted = rgb_a.copy()
    tinted[changed] = np.round(rgb_a[changed] * (1 - ALPHA) + np.asarray(TINT) * ALPHA).astype(np.uint8)

    w, h = small.width, small.height
    canvas = Image.new("RGB", (3 * w + 2 * GAP, HEADER + h), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (panel, caption) in enumerate(zip((rgb_b, rgb_a, tinted), ("BEFORE", "AFTER", "AFTER + change"))):
        canvas.paste(Image.fromarray(panel, "RGB"), (i * (w + GAP), HEADER))
        draw.text((i * (w + GAP) + 2, 2), caption, fill="black")
    fs.publish(dest_png, lambda path: canvas.save(path, format="PNG", optimize=True))
    return w, h
