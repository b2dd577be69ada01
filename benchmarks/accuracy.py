"""Accuracy on LEVIR-CD, a large mosaic's run with its peak memory, and the zoo's models alone.

    python -m benchmarks.accuracy levir  [--data ../shared/data] [--tile 512 --halo 64] [--statistics scene]
    python -m benchmarks.accuracy large  --size 8192 [--tile 512] [--workers N] [--statistics scene] [--extras]
                                         [--model NAME] [--keep] [--keep-stores]
    python -m benchmarks.accuracy models [--size 256 --batch 8 --threads 2]

``levir`` runs the flow on LEVIR-CD test_1..3 (F1 against the labels, COG checks), compares
the tiled map with one forward pass over the whole image, and repeats test_1 with AFTER
reprojected to UTM 14N at 0.5 m. ``large`` builds a size x size 3-band mosaic from the LEVIR
tiles (written block by block, never whole in memory), runs ``changemap run`` on it in a
child process and samples the resident memory of that process tree (driver, Ray and its
actors; Linux /proc) to report the peak next to the throughput; ``--extras`` also asks the run
for polygons, statistics and a quicklook (``--vector --stats --quicklook``), to measure what
they add in memory and time. With ``--keep-stores`` the work stores stay, so a second run with
the same scene and map settings resumes with every tile done: it only exports (with or without
the extras), which isolates what the extras cost from the inference time.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import DEFAULT_DATA, levir_mosaic_pair, run_with_peak_memory
from pipeline.config import STATISTICS


def _levir(args: argparse.Namespace) -> None:
    import torch

    from flows.change_detection import detect_changes
    from pipeline.checks import check_model
    from pipeline.config import MapSpec, RunOptions
    from pipeline.engine.predictor import TilePredictor
    from pipeline.engine.tile_engine import forward_probability
    from pipeline.io import cog, read
    from pipeline.learn.metrics import Confusion, confusion
    from tests.data.make_data import reproject_to

    root = Path(args.data) / "levir-cd-1024" / "geotiff"
    loaded, meta = check_model("tinycd", None, None, "window", 512, 64)
    whole_model = TilePredictor("tinycd", loaded, batch_size=1)
    total, agreement = Confusion(0, 0, 0, 0), Confusion(0, 0, 0, 0)
    near_seam = flipped = seam_px = all_px = 0
    tmp = Path(tempfile.mkdtemp(prefix="changemap-bench-"))
    try:
        for i in (1, 2, 3):
            a, b, lab = (str(root / f"test_{i}_{s}.tif") for s in ("A", "B", "label"))
            out = tmp / f"test_{i}.tif"
            s = detect_changes(MapSpec(before=a, after=b, mask=True, tile=args.tile, halo=args.halo,
                                       statistics=args.statistics), RunOptions(output=str(out), workers=args.workers))
            pred, grid, valid = read.read_raster(str(out), 2)
            label, label_grid, _ = read.read_raster(lab)
            c = confusion(pred > 0, label > 127, valid)
            total = total + c
            # One forward pass over the whole image (no tiling) for the seam check.
            img = np.stack([read.read_raster(p, band)[0] for p in (a, b) for band in (1, 2, 3)]).reshape(2, 3, *pred.shape)
            with torch.inference_mode():
                whole = forward_probability(whole_model.model, whole_model._prepare(img[None]))[0] > meta.threshold
            agreement = agreement + confusion(pred > 0, whole)
            flips = (pred > 0) != whole
            seam = _distance_to_tile_borders(pred.shape, args.tile) < 32
            flipped += int(flips.sum())
            near_seam += int((flips & seam).sum())
            seam_px, all_px = seam_px + int(seam.sum()), all_px + seam.size
            print(f"test_{i}: F1 {c.f1:.4f} IoU {c.iou:.4f}  tiled-vs-whole F1 {confusion(pred > 0, whole).f1:.4f}  "
                  f"same grid {grid == label_grid}  COG problems {cog.cog_problems(str(out))}  "
                  f"{s['megapixels_per_second']:.3f} MP/s", flush=True)
        print(f"LEVIR test_1..3 (tile {args.tile}, halo {args.halo}, {args.statistics} statistics): "
              f"F1 {total.f1:.4f} IoU {total.iou:.4f} "
              f"precision {total.precision:.4f} recall {total.recall:.4f}; tiled vs whole-image F1 {agreement.f1:.4f}; "
              f"{near_seam} of {flipped} differing pixels lie within 32 px of an inner tile border "
              f"({100 * seam_px / all_px:.1f} % of the area)")
        utm = str(reproject_to(str(root / "test_1_B.tif"), str(tmp / "after_utm.tif"), "EPSG:32614", 0.5))
        out = tmp / "utm.tif"
        detect_changes(MapSpec(before=str(root / "test_1_A.tif"), after=utm, mask=True, tile=args.tile,
                               halo=args.halo, statistics=args.statistics), RunOptions(output=str(out)))
        pred, _, valid = read.read_raster(str(out), 2)
        label, _, _ = read.read_raster(str(root / "test_1_label.tif"))
        print(f"test_1 with AFTER in UTM 14N at 0.5 m: F1 {confusion(pred > 0, label > 127, valid).f1:.4f} "
              f"(valid {valid.mean():.4f})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _distance_to_tile_borders(shape: tuple[int, int], tile: int) -> np.ndarray:
    """Pixel distance to the nearest inner tile border (inf where the scene has one tile)."""
    def axis(n: int) -> np.ndarray:
        borders = np.arange(tile, n, tile)
        idx = np.arange(n)
        if not len(borders):
            return np.full(n, np.inf)
        return np.min(np.minimum(np.abs(idx[:, None] - borders[None]), np.abs(idx[:, None] + 1 - borders[None])), 1)
    return np.minimum(axis(shape[0])[:, None], axis(shape[1])[None, :])


def _large(args: argparse.Namespace) -> None:
    work = Path(args.workdir or tempfile.mkdtemp(prefix="changemap-large-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    before, after = levir_mosaic_pair(Path(args.data), work, args.size)
    print(f"mosaics {args.size}x{args.size} ready in {time.perf_counter() - t0:.1f} s "
          f"({before.stat().st_size / 1e6:.0f} MB + {after.stat().st_size / 1e6:.0f} MB on disk)", flush=True)
    out = work / f"change_{args.size}.tif"
    cmd = [sys.executable, "-m", "pipeline.cli", "run", str(before), str(after), "--output", str(out),
           "--overwrite", "--tile", str(args.tile), "--halo", str(args.halo), "--statistics", args.statistics,
           "--json",
           "--workdir", str(work / "stores")]
    if args.workers:
        cmd += ["--workers", str(args.workers)]
    if args.model:
        cmd += ["--model", args.model] + ([] if args.model == "tinycd" else ["--weights", "none"])
    extras = {"vector": work / f"changes_{args.size}.gpkg", "stats": work / f"stats_{args.size}.json",
              "quicklook": work / f"quicklook_{args.size}.png"} if args.extras else {}
    for key, path in extras.items():
        cmd += [f"--{key}", str(path)]
    if args.keep_stores:
        cmd += ["--keep-workdir"]
    code, seconds, (peak_rss, peak_pss), output = run_with_peak_memory(cmd)
    summary = next((json.loads(line) for line in output.splitlines() if line.startswith("{")), None)
    if code or summary is None:
        print(output[-3000:])
        raise SystemExit(f"run failed with exit code {code}")
    mp = summary["megapixels"]
    print(f"scene {args.size}x{args.size} ({mp:.1f} MP, {2 * 3 * mp:.0f} MB of uint8 input per pair): "
          f"{summary['tiles']} tiles in {summary['seconds']:.1f} s = {summary['megapixels_per_second']:.3f} MP/s "
          f"(process wall {seconds:.1f} s); peak memory of the process tree: PSS {peak_pss / 2**20:.0f} MiB, "
          f"summed RSS {peak_rss / 2**20:.0f} MiB; "
          f"{summary['workers']} {summary['device']} worker(s)")
    if extras:
        change = summary.get("change") or {}
        sizes = ", ".join(f"{k} {p.stat().st_size / 1e6:.1f} MB" for k, p in extras.items() if p.exists())
        print(f"extras: {change.get('regions')} regions, {change.get('changed_area_km2', 0):.4f} km² changed "
              f"({change.get('changed_percent_of_valid', 0):.2f} %); {sizes}")
    if not (args.keep or args.keep_stores):
        shutil.rmtree(work, ignore_errors=True)


def _models(args: argparse.Namespace) -> None:
    import torch

    import models

    torch.set_num_threads(args.threads)
    x = torch.randn(args.batch, 2, 3, args.size, args.size)
    print(f"{'model':<28} {'parameters':>12} {'MP/s':>8}  (input {args.batch} x 2 x 3 x {args.size}^2, "
          f"{args.threads} threads, inference_mode, CPU)")
    for name in models.list_models(kind="deep"):
        kwargs = {"backbone": "resnet", "head": "segformer"} if name == "siamese" else {}
        model = models.create_model(name, **kwargs).eval()
        with torch.inference_mode():
            model(x[:1])  # warm-up
            runs, start = 0, time.perf_counter()
            while runs < args.repeats or time.perf_counter() - start < 5:
                model(x)
                runs += 1
            seconds = (time.perf_counter() - start) / runs
        params = sum(p.numel() for p in model.parameters())
        mp = args.batch * args.size * args.size / 1e6
        print(f"{name:<28} {params:>12,} {mp / seconds:>8.3f}", flush=True)


def main(argv: list[str] | None = None) -> None:
    """Command line of the benchmark."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.accuracy", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="which", required=True)
    for name in ("levir", "large"):
        s = sub.add_parser(name)
        s.add_argument("--data", default=str(DEFAULT_DATA), help="the shared data folder")
        s.add_argument("--tile", type=int, default=512)
        s.add_argument("--halo", type=int, default=64)
        s.add_argument("--workers", type=int, default=None)
        s.add_argument("--statistics", choices=STATISTICS, default="window")
    zoo = sub.add_parser("models")
    zoo.add_argument("--size", type=int, default=256)
    zoo.add_argument("--batch", type=int, default=8)
    zoo.add_argument("--threads", type=int, default=2)
    zoo.add_argument("--repeats", type=int, default=2)
    large = sub.choices["large"]
    large.add_argument("--size", type=int, default=8192)
    large.add_argument("--workdir", default=None, help="where the mosaics and stores go (default: temporary)")
    large.add_argument("--keep", action="store_true", help="keep the mosaics and outputs")
    large.add_argument("--keep-stores", action="store_true",
                       help="keep the work stores: a second run with the same settings only exports")
    large.add_argument("--extras", action="store_true",
                       help="also write polygons (.gpkg), statistics and a quicklook (--vector --stats --quicklook)")
    large.add_argument("--model", default=None,
                       help="registered model (default: tinycd with its weights; others run with --weights none)")
    args = p.parse_args(argv)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    {"levir": _levir, "large": _large, "models": _models}[args.which](args)


if __name__ == "__main__":
    main()
