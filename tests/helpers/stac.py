"""STAC test helpers: Sentinel-2-L2A-like Items with band-per-file COGs in a local S3 (moto),
as a static catalog, a stac-geoparquet file and a live STAC API (``rustac serve``) on 127.0.0.1.

The fixtures built from them (``stac_world``, ``run_storage``) are in tests/conftest.py.
"""
from __future__ import annotations

import datetime as dt
import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.transform import from_origin
from rasterio.warp import reproject, transform_geom

from tests.helpers import free_port

COLLECTION = "sentinel-2-l2a"
EPSG = 32633
SIZE_M = 640.0  # every scene: 64 x 64 pixels of 10 m
# asset key -> (eo common name, Sentinel-2 band, resolution m, center wavelength um)
BANDS = {
    "blue": ("blue", "B02", 10, 0.49),
    "green": ("green", "B03", 10, 0.56),
    "red": ("red", "B04", 10, 0.665),
    "nir": ("nir", "B08", 10, 0.842),
    "swir16": ("swir16", "B11", 20, 1.61),
}
SCALE, OFFSET, NODATA = 0.0001, -0.1, 0
TILES = {"33UVP": (500000.0, 5400640.0), "33UUP": (400000.0, 5400640.0)}  # tile -> upper-left corner (UTM 33N)
BEFORE = "2023-06-01/2023-06-30"
AFTER = "2024-06-01/2024-06-30"
# (tile, date, cloud cover %, relative orbit): the least cloudy per tile and window differs from the next by > 5 points
SCENES = [
    ("33UVP", "2023-06-03", 35.0, 22), ("33UVP", "2023-06-12", 4.0, 122), ("33UVP", "2023-06-20", 18.0, 22),
    ("33UVP", "2024-06-05", 60.0, 22), ("33UVP", "2024-06-15", 9.0, 122), ("33UVP", "2024-06-25", 30.0, 22),
    ("33UVP", "2023-09-10", 1.0, 22),  # outside both windows
    ("33UUP", "2023-06-05", 12.0, 22), ("33UUP", "2023-06-18", 40.0, 122),
    ("33UUP", "2024-06-08", 45.0, 22), ("33UUP", "2024-06-22", 33.0, 122), ("33UUP", "2024-06-28", 70.0, 22),
]
# SCL classes of every scene: vegetation (4), a cloud (9) and a cloud shadow (3), at 20 m
SCL_CLOUD = (slice(4, 8), slice(4, 8))
SCL_SHADOW = (slice(12, 14), slice(20, 24))
NODATA_PIXEL = (30, 40)  # a 10 m pixel with DN 0 (no data) in 'red'


def item_id(tile: str, day: str) -> str:
    """An Earth Search style Item id."""
    return f"S2B_{tile}_{day.replace('-', '')}_0_L2A"


def expected_pairs(max_cloud: float) -> list[tuple[str, str, str]]:
    """(tile label, BEFORE id, AFTER id) the search must choose, per tile (sorted), with tiles lacking one left out."""
    out = []
    for tile in sorted(TILES):
        best = []
        for window in (BEFORE, AFTER):
            start, end = window.split("/")
            ok = [(c, d) for t, d, c, _ in SCENES if t == tile and start <= d <= end and c <= max_cloud]
            best.append(item_id(tile, min(ok)[1]) if ok else None)
        if all(best):
            out.append((f"T{tile}", best[0], best[1]))
    return out


# ---------------------------------------------------------------- rasters and Items


def write_cog(path: Path, data: np.ndarray, x0: float, y0: float, res: float, nodata: float | None = NODATA) -> None:
    """A one-band COG in UTM 33N with its upper-left corner at (x0, y0)."""
    profile = dict(driver="COG", width=data.shape[1], height=data.shape[0], count=1, dtype=str(data.dtype),
                   crs=CRS.from_epsg(EPSG), transform=from_origin(x0, y0, res, res), nodata=nodata, compress="deflate")
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)


def reflectance(seed: int, side: int) -> np.ndarray:
    """A smooth-ish surface reflectance field in [0.02, 0.5], on 1e-4 steps (what DNs can hold)."""
    rng = np.random.default_rng(seed)
    field_ = rng.uniform(0.02, 0.5, (side // 4 + 1, side // 4 + 1))
    big = np.kron(field_, np.ones((4, 4)))[:side, :side] + rng.uniform(-0.01, 0.01, (side, side))
    return np.round(np.clip(big, 0.02, 0.5), 4)


def scl_classes() -> np.ndarray:
    """The SCL of every scene (32 x 32 at 20 m)."""
    scl = np.full((32, 32), 4, np.uint8)
    scl[SCL_CLOUD] = 9
    scl[SCL_SHADOW] = 3
    return scl


def write_scene(folder: Path, tile: str, seed: int, *, dn_offset: int = 1000, bands=BANDS,
                with_scl: bool = True) -> dict[str, Path]:
    """Band-per-file uint16 COGs of one scene (DN = 10000 * reflectance + dn_offset), 'red' with one nodata pixel."""
    folder.mkdir(parents=True, exist_ok=True)
    x0, y0 = TILES[tile]
    out = {}
    for n, (key, (_, _, res, _)) in enumerate(bands.items()):
        side = int(SIZE_M // res)
        dn = (np.round(reflectance(seed * 10 + n, side) * 10000) + dn_offset).astype(np.uint16)
        if key == "red":
            dn[NODATA_PIXEL] = NODATA
        out[key] = folder / f"{key}.tif"
        write_cog(out[key], dn, x0, y0, res)
    if with_scl:
        out["scl"] = folder / "scl.tif"
        write_cog(out["scl"], scl_classes(), x0, y0, 20, nodata=0)
    return out


def stacked_by_hand(files: dict[str, Path], keys: list[str] | tuple[str, ...], *, cloud_mask: bool = False
                    ) -> tuple[np.ndarray, np.ndarray]:
    """A scene's bands read from local copies of its COGs with rasterio alone, as a user would stack them.

    20 m bands reprojected bilinearly onto the 10 m grid, ``DN * scale + offset``; valid where
    every band has data and, with ``cloud_mask``, where the SCL (nearest onto 10 m) is not cloud,
    shadow, defective or no data.
    """
    with rasterio.open(files["red"]) as ref:
        transform, crs, shape = ref.transform, ref.crs, ref.shape
    out, valid = [], np.ones(shape, bool)
    for key in keys:
        with rasterio.open(files[key]) as src:
            if src.shape == shape:
                dn = src.read(1).astype(np.float32)
                dn[dn == NODATA] = np.nan
            else:
                dn = np.full(shape, np.nan, np.float32)
                reproject(src.read(1), dn, src_transform=src.transform, src_crs=src.crs, dst_transform=transform,
                          dst_crs=crs, src_nodata=NODATA, dst_nodata=np.nan, resampling=Resampling.bilinear)
        valid &= ~np.isnan(dn)
        out.append(dn * np.float32(SCALE) + np.float32(OFFSET))
    if cloud_mask:
        with rasterio.open(files["scl"]) as src:
            scl = np.zeros(shape, np.uint8)
            reproject(src.read(1), scl, src_transform=src.transform, src_crs=src.crs, dst_transform=transform,
                      dst_crs=crs, resampling=Resampling.nearest)
        valid &= ~np.isin(scl, (0, 1, 3, 8, 9, 10))
    return np.stack(out), valid


def write_stacked(path: Path, files: dict[str, Path], keys: list[str] | tuple[str, ...], *, cloud_mask: bool = False) -> Path:
    """:func:`stacked_by_hand` written as one float32 GeoTIFF (NaN where not valid) on the 10 m grid."""
    image, valid = stacked_by_hand(files, keys, cloud_mask=cloud_mask)
    image[:, ~valid] = np.nan
    with rasterio.open(files["red"]) as ref:
        profile = dict(driver="GTiff", width=ref.width, height=ref.height, count=len(keys), dtype="float32",
                       crs=ref.crs, transform=ref.transform, nodata=float("nan"))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(image)
    return path


def footprint(tile: str) -> dict:
    """The scene's footprint in WGS 84 (GeoJSON)."""
    x0, y0 = TILES[tile]
    ring = [[x0, y0 - SIZE_M], [x0 + SIZE_M, y0 - SIZE_M], [x0 + SIZE_M, y0], [x0, y0], [x0, y0 - SIZE_M]]
    return transform_geom(f"EPSG:{EPSG}", "EPSG:4326", {"type": "Polygon", "coordinates": [ring]})


def make_item(iid: str, tile: str, day: str, cloud: float, orbit: int, hrefs: dict[str, str], *,
              baseline: str = "05.09", offset_applied: bool | None = False, raster_bands: str = "earth-search",
              proj: bool = True) -> dict:
    """A Sentinel-2 L2A Item shaped like Earth Search v1's (eo:bands, raster:bands, proj:*, grid:code, s2:*).

    ``raster_bands``: ``earth-search`` (scale 0.0001, offset -0.1), ``scale-only`` (scale 0.0001, offset 0),
    ``none`` (no raster:bands, as Planetary Computer).
    """
    x0, y0 = TILES[tile]
    geom = footprint(tile)
    xs, ys = zip(*geom["coordinates"][0])
    assets = {}
    for key, (common, s2name, res, wl) in BANDS.items():
        if key not in hrefs:
            continue
        n = int(SIZE_M // res)
        asset = {"href": hrefs[key], "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                 "title": f"{common} ({s2name}) - {res}m", "roles": ["data", "reflectance"], "gsd": res,
                 "eo:bands": [{"name": s2name, "common_name": common, "center_wavelength": wl}]}
        if raster_bands != "none":
            asset["raster:bands"] = [{"nodata": NODATA, "data_type": "uint16", "bits_per_sample": 15, "spatial_resolution": res,
                                      "scale": SCALE, "offset": OFFSET if raster_bands == "earth-search" else 0.0}]
        if proj:
            asset["proj:shape"] = [n, n]
            asset["proj:transform"] = [res, 0.0, x0, 0.0, -res, y0, 0.0, 0.0, 1.0]
        assets[key] = asset
    if "scl" in hrefs:
        assets["scl"] = {"href": hrefs["scl"], "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                         "title": "Scene classification map (SCL)", "roles": ["data"],
                         "raster:bands": [{"nodata": 0, "data_type": "uint8", "spatial_resolution": 20}]}
        if proj:
            assets["scl"].update({"proj:shape": [32, 32], "proj:transform": [20, 0.0, x0, 0.0, -20, y0, 0.0, 0.0, 1.0]})
    assets["thumbnail"] = {"href": "https://example.invalid/thumb.jpg", "type": "image/jpeg", "roles": ["thumbnail"]}
    when = dt.datetime.fromisoformat(day).replace(hour=10, minute=6, second=21, tzinfo=dt.timezone.utc)
    props = {"datetime": when.isoformat().replace("+00:00", "Z"), "platform": "sentinel-2b", "constellation": "sentinel-2",
             "instruments": ["msi"], "eo:cloud_cover": cloud, "grid:code": f"MGRS-{tile}", "mgrs:utm_zone": 33,
             "s2:processing_baseline": baseline,
             "s2:product_uri": f"S2B_MSIL2A_{day.replace('-', '')}T100559_N{baseline.replace('.', '')}_R{orbit:03d}_T{tile}_"
                               f"{day.replace('-', '')}T120000.SAFE"}
    if proj:
        props["proj:epsg"] = EPSG
    if offset_applied is not None:
        props["earthsearch:boa_offset_applied"] = offset_applied
    return {"type": "Feature", "stac_version": "1.0.0", "id": iid, "collection": COLLECTION,
            "stac_extensions": ["https://stac-extensions.github.io/eo/v1.1.0/schema.json",
                                "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
                                "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
                                "https://stac-extensions.github.io/grid/v1.1.0/schema.json"],
            "geometry": geom, "bbox": [min(xs), min(ys), max(xs), max(ys)], "properties": props, "links": [], "assets": assets}


def collection_dict(items: list[dict]) -> dict:
    """A Collection for the Items (no links: rustac serve would follow them)."""
    xs = [i["bbox"][0] for i in items] + [i["bbox"][2] for i in items]
    ys = [i["bbox"][1] for i in items] + [i["bbox"][3] for i in items]
    return {"type": "Collection", "stac_version": "1.0.0", "id": COLLECTION, "description": "Sentinel-2 L2A (test copy)",
            "license": "proprietary", "links": [],
            "extent": {"spatial": {"bbox": [[min(xs), min(ys), max(xs), max(ys)]]},
                       "temporal": {"interval": [["2015-06-27T10:25:31Z", None]]}}}


# ---------------------------------------------------------------- rustac serve


def rustac_command() -> list[str]:
    """The ``rustac`` console script of this venv (PyPI package ``rustac``)."""
    exe = Path(sys.executable).with_name("rustac")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("rustac")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from rustac import main; sys.argv[0] = 'rustac'; sys.exit(main())"]


@dataclass
class StacServer:
    """A running ``rustac serve`` (in-memory backend)."""

    url: str
    proc: subprocess.Popen

    def stop(self) -> None:
        """Stop the server (SIGINT, then kill)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def serve(folder: Path, collections: list[dict], items: list[dict], timeout: float = 20.0) -> StacServer:
    """Serve collections and Items with ``rustac serve --use-duckdb false`` on a free port of 127.0.0.1."""
    folder.mkdir(parents=True, exist_ok=True)
    hrefs = []
    for c in collections:
        path = folder / f"{c['id']}.collection.json"
        path.write_text(json.dumps({**c, "links": []}))
        hrefs.append(str(path))
    (folder / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    hrefs.append(str(folder / "items.json"))
    port = free_port()
    log = open(folder / "rustac.log", "w")  # the server writes it as long as it runs
    proc = subprocess.Popen([*rustac_command(), "serve", "--use-duckdb", "false", "--addr", f"127.0.0.1:{port}", *hrefs],
                            stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    log.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"rustac serve exited {proc.returncode}: {(folder / 'rustac.log').read_text()[-800:]}")
        try:
            with urllib.request.urlopen(url + "/", timeout=1):
                return StacServer(url, proc)
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.05)


# ---------------------------------------------------------------- the world


@dataclass
class StacWorld:
    """Sentinel-2-like Items in moto S3 and the three ways to search them."""

    storage_options: dict
    bucket: str
    static: str  # s3://.../catalog.json (Items with relative asset hrefs, beside their COGs)
    geoparquet: str  # s3://.../items.parquet
    api: str  # http://127.0.0.1:PORT
    items: list[dict]  # the Items as the API holds them (absolute hrefs, no links)
    local: dict[str, dict[str, Path]]  # item id -> asset key -> local copy of its COG
    static_items: dict[str, str] = field(default_factory=dict)  # item id -> s3:// URL of its JSON in the static catalog
    bbox: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)


def s3_client(options: dict):
    """A boto3 S3 client for the moto endpoint of ``options``."""
    import boto3

    return boto3.client("s3", endpoint_url=options["endpoint_url"], aws_access_key_id=options["key"],
                        aws_secret_access_key=options["secret"], region_name="us-east-1")


def build_world(options: dict, folder: Path, bucket: str | None = None) -> tuple[StacWorld, StacServer]:
    """Write the scenes, Items, static catalog and stac-geoparquet file to S3 (a new bucket), and start the STAC API."""
    import uuid

    import rustac

    bucket = bucket or f"stac-world-{uuid.uuid4().hex[:8]}"

    s3 = s3_client(options)
    s3.create_bucket(Bucket=bucket)
    root = f"s3://{bucket}/static"
    items, local, static_items = [], {}, {}
    for n, (tile, day, cloud, orbit) in enumerate(SCENES):
        iid = item_id(tile, day)
        files = write_scene(folder / "scenes" / iid, tile, seed=n)
        local[iid] = files
        prefix = f"static/{COLLECTION}/{iid}"
        for key, path in files.items():
            s3.upload_file(str(path), bucket, f"{prefix}/{key}.tif")
        # the static catalog's Item: relative asset hrefs (a self-contained catalog), relative links
        relative = make_item(iid, tile, day, cloud, orbit, {k: f"./{k}.tif" for k in files})
        relative["links"] = [{"rel": "root", "href": "../../catalog.json", "type": "application/json"},
                             {"rel": "parent", "href": "../collection.json", "type": "application/json"},
                             {"rel": "collection", "href": "../collection.json", "type": "application/json"}]
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{iid}.json", Body=json.dumps(relative).encode())
        static_items[iid] = f"{root}/{COLLECTION}/{iid}/{iid}.json"
        # the API's Item: absolute hrefs and no links (the API writes its own self link, its item endpoint)
        items.append(make_item(iid, tile, day, cloud, orbit, {k: f"s3://{bucket}/{prefix}/{k}.tif" for k in files}))
    collection = collection_dict(items)
    s3.put_object(Bucket=bucket, Key=f"static/{COLLECTION}/collection.json", Body=json.dumps({
        **collection, "links": [{"rel": "root", "href": "../catalog.json", "type": "application/json"},
                                {"rel": "parent", "href": "../catalog.json", "type": "application/json"}]
        + [{"rel": "item", "href": f"./{i['id']}/{i['id']}.json", "type": "application/json"} for i in items]}).encode())
    s3.put_object(Bucket=bucket, Key="static/catalog.json", Body=json.dumps({
        "type": "Catalog", "stac_version": "1.0.0", "id": "changemap-test", "description": "test catalog",
        "links": [{"rel": "root", "href": "./catalog.json", "type": "application/json"},
                  {"rel": "child", "href": f"./{COLLECTION}/collection.json", "type": "application/json"}]}).encode())
    # the stac-geoparquet export: the same Items, each with a self link to its JSON in the static catalog
    exported = [{**i, "links": [{"rel": "self", "href": static_items[i["id"]], "type": "application/json"}]} for i in items]
    rustac.write_sync(str(folder / "items.parquet"), exported)
    s3.upload_file(str(folder / "items.parquet"), bucket, "items.parquet")
    server = serve(folder / "api", [collection], items)
    west, south, east, north = collection["extent"]["spatial"]["bbox"][0]
    world = StacWorld(options, bucket, f"{root}/catalog.json", f"s3://{bucket}/items.parquet", server.url, items, local,
                      static_items, (west - 0.01, south - 0.01, east + 0.01, north + 0.01))
    return world, server
