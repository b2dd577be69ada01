"""Seeded generator of the small GeoTIFFs the tests use (TorchGeo-style ``data.py``).

Run ``python tests/data/make_data.py OUT_DIR`` or call :func:`make_all`. Every file is
derived from one seeded random scene, so the same seed gives the same bytes' content:

- ``before.tif`` / ``after.tif``: 3-band uint8, EPSG:32614 (UTM 14N), 1 m pixels,
  230 x 300, nodata 0; AFTER has new bright "buildings" and a nodata stripe on the left.
- ``after_4326.tif``: AFTER warped to EPSG:4326 (another CRS and resolution).
- ``before_uint16.tif`` / ``after_uint16.tif``: the pair as uint16 (x 257), nodata 0.
- ``far.tif``: like BEFORE but 100 km away (no overlap).
- ``four_band.tif``: BEFORE plus a fourth band (band-count mismatch).
- ``no_crs.tif``: BEFORE's pixels without a CRS.
- ``corrupt.tif``: BEFORE truncated to 40 % of its bytes.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.warp import Resampling, calculate_default_transform, reproject

HEIGHT, WIDTH = 230, 300
UTM14 = CRS.from_epsg(32614)
ORIGIN = (600000.0, 3340000.0)  # near Austin, TX
CHANGES = [(40, 60, 30, 40), (120, 200, 50, 35), (170, 30, 25, 60)]  # row, col, h, w


def scene(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """BEFORE and AFTER as (3, H, W) uint8: smooth terrain + noise, AFTER with new rectangles."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH] / 40.0
    base = np.stack([
        90 + 30 * np.sin(yy + c) * np.cos(xx - c) for c in range(3)
    ]) + rng.normal(0, 6, (3, HEIGHT, WIDTH))
    before = np.clip(base, 1, 255).astype("uint8")
    after = np.clip(base + rng.normal(0, 4, base.shape), 1, 255).astype("uint8")
    for r, c, h, w in CHANGES:
        after[:, r:r + h, c:c + w] = np.array([220, 210, 200], dtype="uint8")[:, None, None]
    after[:, :, :12] = 0  # nodata stripe
    return before, after


def _write(path: Path, data: np.ndarray, crs: CRS | None, transform, nodata: float | None = 0) -> None:
    profile = {"driver": "GTiff", "width": data.shape[2], "height": data.shape[1], "count": data.shape[0],
               "dtype": data.dtype.name, "crs": crs, "transform": transform, "nodata": nodata}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


def make_all(out: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write every test raster into ``out``; returns name -> path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    before, after = scene(seed)
    transform = from_origin(*ORIGIN, 1.0, 1.0)
    paths = {name: out / f"{name}.tif" for name in (
        "before", "after", "after_4326", "before_uint16", "after_uint16", "far", "four_band", "no_crs", "corrupt")}
    _write(paths["before"], before, UTM14, transform)
    _write(paths["after"], after, UTM14, transform)
    _write(paths["before_uint16"], before.astype("uint16") * 257, UTM14, transform)
    _write(paths["after_uint16"], after.astype("uint16") * 257, UTM14, transform)
    _write(paths["far"], before, UTM14, from_origin(ORIGIN[0] + 100_000, ORIGIN[1], 1.0, 1.0))
    _write(paths["four_band"], np.concatenate([before, before[:1]]), UTM14, transform)
    _write(paths["no_crs"], before, None, transform)

    dst_crs = CRS.from_epsg(4326)
    left, top = ORIGIN
    dst_transform, w, h = calculate_default_transform(UTM14, dst_crs, WIDTH, HEIGHT, left, top - HEIGHT, left + WIDTH, top)
    warped = np.zeros((3, h, w), dtype="uint8")
    reproject(after, warped, src_transform=transform, src_crs=UTM14, dst_transform=dst_transform, dst_crs=dst_crs,
              src_nodata=0, dst_nodata=0, resampling=Resampling.bilinear)
    _write(paths["after_4326"], warped, dst_crs, dst_transform)

    raw = paths["before"].read_bytes()
    paths["corrupt"].write_bytes(raw[: int(len(raw) * 0.4)])
    return paths


if __name__ == "__main__":
    for name, path in make_all(sys.argv[1] if len(sys.argv) > 1 else "test-data").items():
        print(name, path)


def reproject_to(src_path: str | Path, dst_path: str | Path, crs: str, resolution: float) -> Path:
    """Warp a raster to another CRS and resolution (bilinear), e.g. LEVIR AFTER to UTM 14N at 0.5 m."""
    dst_crs = CRS.from_user_input(crs)
    with rasterio.open(src_path) as src:
        transform, w, h = calculate_default_transform(src.crs, dst_crs, src.width, src.height, *src.bounds,
                                                      resolution=resolution)
        out = np.zeros((src.count, h, w), dtype=src.dtypes[0])
        reproject(src.read(), out, src_transform=src.transform, src_crs=src.crs, dst_transform=transform,
                  dst_crs=dst_crs, resampling=Resampling.bilinear, dst_nodata=0)
    _write(Path(dst_path), out, dst_crs, transform, nodata=0)
    return Path(dst_path)
