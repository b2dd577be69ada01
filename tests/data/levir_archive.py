"""A small real scene archive for archive tests: 256x256 GeoTIFF crops of the LEVIR-CD test tiles.

Crops keep their georeferencing (window transform of the EPSG:4326 tiles). The crops
with the most change are chosen, three per tile, so every crop has buildings to find.
Also writes a corrupt pair (a truncated copy) on demand.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

CROP = 256


def _crops_with_most_change(label: np.ndarray, n: int) -> list[tuple[int, int]]:
    scores = []
    for r in range(0, label.shape[0], CROP):
        for c in range(0, label.shape[1], CROP):
            scores.append(((label[r:r + CROP, c:c + CROP] > 0).mean(), r, c))
    scores.sort(reverse=True)
    return sorted((r, c) for _, r, c in scores[:n])


def _write_crop(src_path: Path, dest: Path, r: int, c: int) -> None:
    with rasterio.open(src_path) as src:
        w = Window(c, r, CROP, CROP)
        profile = {**src.profile, "width": CROP, "height": CROP, "transform": window_transform(w, src.transform),
                   "tiled": False, "compress": "deflate"}
        profile.pop("blockxsize", None)
        profile.pop("blockysize", None)
        with rasterio.open(dest, "w", **profile) as dst:
            dst.write(src.read(window=w))


def make_levir_archive(levir_geotiff: Path, dest: Path, per_tile: int = 3) -> list[dict[str, str]]:
    """Write crops ``{id}_A.tif``, ``{id}_B.tif``, ``{id}_label.tif`` under ``dest``; return their records."""
    dest.mkdir(parents=True, exist_ok=True)
    records = []
    for n in (1, 2, 3):
        with rasterio.open(levir_geotiff / f"test_{n}_label.tif") as src:
            label = src.read(1)
        for r, c in _crops_with_most_change(label, per_tile):
            pid = f"levir{n}_{r:04d}_{c:04d}"
            rec = {"id": pid}
            for part, key in (("A", "before"), ("B", "after"), ("label", "label")):
                path = dest / f"{pid}_{part}.tif"
                _write_crop(levir_geotiff / f"test_{n}_{part}.tif", path, r, c)
                rec[key] = str(path)
            records.append(rec)
    return records


def make_corrupt_pair(good: dict[str, str], dest: Path, pid: str = "corrupt_pair") -> dict[str, str]:
    """A pair whose AFTER is a good crop truncated to 30 % of its bytes."""
    data = Path(good["after"]).read_bytes()
    after = dest / f"{pid}_B.tif"
    after.write_bytes(data[: int(len(data) * 0.3)])
    return {"id": pid, "before": good["before"], "after": str(after), "label": good["label"]}
