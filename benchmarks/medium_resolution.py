"""F1 of the scene-fitted models and TinyCD on labelled 10-30 m pairs, run as a user runs them.

    python -m benchmarks.medium_resolution [--data ../shared/data] [--models cva,irmad,tinycd] [--workdir DIR]

Each pair goes through ``changemap run`` (in this process, one session) with the model's
automatic threshold, and is scored with ``changemap evaluate`` over its labelled pixels only:

- Landsat Taizhou (Landsat-7 ETM+, 6 bands, 30 m; label 0 unchanged, 1 changed, 255 unlabeled);
- the OSCD Sentinel-2 RGB renders of Beirut and Cupertino (PNG, written here as GeoTIFFs on an
  arbitrary UTM grid at 10 m; labels 0/255).

TinyCD (trained on 0.5 m building change) reads bands 3,2,1 of Landsat (red, green, blue).
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin

from benchmarks.common import DEFAULT_DATA


def png_to_geotiff(png: Path, tif: Path, *, resolution: float = 10.0) -> Path:
    """An OSCD render (PNG) as a GeoTIFF on an arbitrary UTM grid (the maps need one)."""
    with rasterio.open(png) as src:
        data = src.read()
    profile = {"driver": "GTiff", "width": data.shape[2], "height": data.shape[1], "count": data.shape[0],
               "dtype": data.dtype.name, "crs": CRS.from_epsg(32636), "transform": from_origin(500000, 3700000,
                                                                                              resolution, resolution)}
    with rasterio.open(tif, "w", **profile) as dst:
        dst.write(data)
    return tif


def pairs(data: Path, work: Path) -> dict[str, tuple[str, str, str, str]]:
    """``name -> (before, after, label, label values)`` of the labelled 10-30 m pairs."""
    taizhou = data / "landsat-taizhou"
    out = {"Landsat Taizhou (30 m, 6 bands)": (str(taizhou / "A.tif"), str(taizhou / "B.tif"),
                                                str(taizhou / "label.tif"), "0,1,255")}
    for city in ("beirut", "cupertino"):
        root = data / "oscd-rgb" / city
        paths = [png_to_geotiff(root / "pair" / f"img{i}.png", work / f"{city}_{i}.tif") for i in (1, 2)]
        label = png_to_geotiff(root / "cm" / "cm.png", work / f"{city}_label.tif")
        out[f"OSCD {city.title()} (10 m, RGB render)"] = (str(paths[0]), str(paths[1]), str(label), "0,255")
    return out


def main(argv: list[str] | None = None) -> None:
    """Run every model on every pair; print a table of F1, precision and recall."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.medium_resolution", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--models", default="cva,irmad,tinycd")
    p.add_argument("--workdir", default=None)
    args = p.parse_args(argv)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from pipeline.cli.run import run_pair
    from pipeline.config import MapSpec, RunOptions
    from pipeline.learn.evaluate import evaluate_pair, parse_label_values
    from pipeline.session import Session

    work = Path(args.workdir or tempfile.mkdtemp(prefix="changemap-medium-"))
    work.mkdir(parents=True, exist_ok=True)
    models = [m for m in args.models.split(",") if m]
    rows = []
    with Session() as session:
        for name, (before, after, label, values) in pairs(Path(args.data), work).items():
            for model in models:
                with rasterio.open(before) as src:
                    bands = (3, 2, 1) if model == "tinycd" and src.count >= 6 else None
                out = work / f"{Path(before).stem}_{model}.tif"
                spec = MapSpec(before=before, after=after, model=model, bands=bands, mask=True)
                summary = run_pair(spec, RunOptions(output=str(out), overwrite=True), session=session)
                c = evaluate_pair(str(out), label, label_values=parse_label_values(values))
                rows.append((name, model, c.f1, c.precision, c.recall, summary.threshold, summary.threshold_method))
                print(f"{name} | {model} | F1 {c.f1:.3f} | precision {c.precision:.3f} | recall {c.recall:.3f} | "
                      f"threshold {summary.threshold:.3f} ({summary.threshold_method})", flush=True)
    print("\n| pair | " + " | ".join(models) + " |\n|---|" + "---|" * len(models))
    for name in dict.fromkeys(r[0] for r in rows):
        f1 = {r[1]: r[2] for r in rows if r[0] == name}
        print(f"| {name} | " + " | ".join(f"{f1[m]:.3f}" for m in models) + " |")
    best = {name: max(r[2] for r in rows if r[0] == name and r[1] != "tinycd") for name in dict.fromkeys(r[0] for r in rows)}
    print("better scene-fitted method per pair: " + ", ".join(f"{n} {v:.3f}" for n, v in best.items()))



if __name__ == "__main__":
    main()
