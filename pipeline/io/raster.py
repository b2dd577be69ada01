"""The one module that talks to rasterio/GDAL: metadata, aligned window reads, COG writing.

Everything else in the pipeline sees plain numpy arrays and the value objects of
:mod:`pipeline.grid`.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.crs import CRS
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import RasterioError
from rasterio.session import AWSSession, AzureSession, GSSession
from rasterio.transform import Affine
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds as _transform_bounds
from rasterio.windows import Window as RioWindow

from pipeline import storage
from pipeline.config import COMPRESSIONS
from pipeline.errors import (
    CorruptRasterError,
    GridError,
    InputAccessDeniedError,
    InputRasterError,
    InputStorageError,
    InputUnreachableError,
    MissingRasterError,
    one_paragraph,
    storage_failure,
)
from pipeline.grid import Alignment, Bounds, Grid, RasterInfo
from pipeline.io import fs

# Output blocks and overview settings of the COGs we write.
COG_BLOCKSIZE = 512
# GDAL's block cache defaults to 5 % of RAM: writing a map would fill it with finished blocks, so a
# map writer's memory would grow with the scene; 64 MiB hold a few rows of 512 px blocks.
_GDAL_ENV = {"GDAL_TIFF_INTERNAL_MASK": True, "GDAL_NUM_THREADS": "ALL_CPUS", "GDAL_CACHEMAX": 64}


# Protocols GDAL reads itself through its virtual file systems (/vsis3/, /vsigs/, /vsiaz/,
# /vsicurl/): HTTP range requests for just the blocks a window needs, GDAL's block
# cache and its own retries. Anything else fsspec knows (memory://, ...) is read
# through an fsspec file object handed to GDAL (rasterio's ``opener``), still block by block.
_GDAL_PROTOCOLS = {"s3", "gs", "az", "http"}


def _endpoint(options: dict) -> str | None:
    url = options.get("endpoint_url") or (options.get("client_kwargs") or {}).get("endpoint_url")
    return url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def _gdal_session(url: str) -> tuple[object | None, dict[str, str]]:
    """A rasterio session and GDAL options mirroring the fsspec storage options of ``url``."""
    proto = storage.protocol(url)
    opts = storage.options_for(url)
    config: dict[str, str] = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}
    if proto == "s3":
        endpoint = _endpoint(opts)
        host = None
        if endpoint:
            parts = endpoint.split("://", 1)
            host = parts[-1].rstrip("/")
            config["AWS_HTTPS"] = "NO" if parts[0] == "http" else "YES"
            config["AWS_VIRTUAL_HOSTING"] = "FALSE"  # custom endpoints (MinIO, moto, ...) want path-style URLs
        region = opts.get("region_name") or (opts.get("client_kwargs") or {}).get("region_name")
        session = AWSSession(
            aws_unsigned=bool(opts.get("anon")) or None, aws_access_key_id=opts.get("key"),
            aws_secret_access_key=opts.get("secret"), aws_session_token=opts.get("token"),
            region_name=region, profile_name=opts.get("profile"), endpoint_url=host,
            requester_pays=bool(opts.get("requester_pays", False)),
        )
        return session, config
    if proto == "gs":
        token = opts.get("token")
        if opts.get("anon") or token == "anon":
            config["GS_NO_SIGN_REQUEST"] = "YES"
            return None, config
        return GSSession(token if isinstance(token, str) and os.path.exists(token) else None), config
    if proto == "az":
        return AzureSession(
            azure_storage_connection_string=opts.get("connection_string"),
            azure_storage_account=opts.get("account_name"), azure_storage_access_key=opts.get("account_key"),
            azure_unsigned=bool(opts.get("anon", False)),
        ), config
    return None, config


def _gdal_name(url: str) -> str:
    """The URL rasterio maps to GDAL's /vsi* paths: object-store aliases (s3a, gcs, abfs) folded."""
    proto = storage.protocol(url)
    return url if proto == "http" else f"{proto}://{url.split('://', 1)[1]}"


@contextmanager
def _rio(url: str) -> Iterator[rasterio.DatasetReader]:
    """rasterio.open for a path or URL, inside the GDAL settings its storage needs."""
    with ExitStack() as stack:
        proto = storage.protocol(url)
        if proto in _GDAL_PROTOCOLS:
            session, config = _gdal_session(url)
            stack.enter_context(rasterio.Env(session=session, **config))
            yield stack.enter_context(rasterio.open(_gdal_name(url)))
        elif proto == "file":
            yield stack.enter_context(rasterio.open(storage.local_path(url)))
        else:
            yield stack.enter_context(rasterio.open(url, opener=fs.rasterio_opener(url)))


def storage_endpoint(url: str) -> str | None:
    """The endpoint a remote URL is served from, where it is known (custom S3 endpoint, HTTP host)."""
    proto = storage.protocol(url)
    if proto == "s3":
        return _endpoint(storage.options_for(url))
    if proto == "http":
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return None


def _failure(exc: BaseException, path: str, role: str, where: str = "") -> InputRasterError:
    """The user error a failed open or read of ``path`` amounts to.

    One of: unreachable endpoint, access denied, missing file or object, server error, or (none of
    those) a corrupt file; ``where`` names the rows and columns of a failed window read.
    """
    shown = storage.redact_url(path)
    detail = _detail(exc)
    kind = storage_failure(detail)
    if not storage.is_remote(path) and kind not in ("denied", "missing"):
        kind = None  # a local file has no endpoint or server: what fails is its bytes
    what = f"{role} raster {shown}"
    http = storage.protocol(path) == "http"
    if kind == "unreachable":
        endpoint = storage_endpoint(path) or f"the {storage.protocol(path)}:// endpoint"
        setting = "the host and port in the URL" if http else "endpoint_url in --storage-options (or AWS_ENDPOINT_URL)"
        return InputUnreachableError(
            f"{what} cannot be read: the storage endpoint {endpoint} cannot be reached ({detail}); check "
            f"{setting}, that the server is up, and the network")
    if kind == "denied":
        return InputAccessDeniedError(
            f"{what} is not readable with the given credentials ({detail}); check the credentials (environment, "
            "profile or --storage-options) and the permissions on the file or object")
    if kind == "missing":
        if not storage.is_remote(path):
            return MissingRasterError(f"{what} does not exist; check the path (and the working directory)")
        return MissingRasterError(
            f"{what} does not exist ({detail}); check the URL{'' if http else ' (bucket and key)'}; if it existed "
            "when the run started, something deleted or replaced it meanwhile")
    if kind == "server":
        return InputStorageError(
            f"{what} cannot be read: the storage answered with a server error ({detail}); try again later")
    if where:
        return CorruptRasterError(
            f"{what} cannot be read at {where} ({detail}); the file is corrupt or truncated there: "
            "re-download or re-export it")
    return CorruptRasterError(
        f"{what} cannot be read as a raster ({detail}); the file is corrupt, truncated or not a GeoTIFF: "
        "re-download or re-export it")


def _detail(exc: BaseException) -> str:
    """GDAL's own words for a failure, scrubbed of secrets: rasterio's error and the GDAL errors before it.

    rasterio often raises "Read failed. See previous exception for details." and chains the
    errors GDAL reported (block, codec, HTTP status), which say what actually went wrong.
    """
    said: list[str] = []
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen and len(said) < 4:
        seen.add(id(exc))
        text = one_paragraph(str(exc)).rstrip(".")
        if text and "See previous exception" not in text and not any(text in s for s in said):
            said.append(text)
        exc = exc.__cause__ or exc.__context__
    return storage.scrub("; ".join(said) or "no detail")[:300]


# What a failed rasterio call raises: its own errors, and OS/fsspec errors through an ``opener``.
_READ_ERRORS = (RasterioError, OSError)


@contextmanager
def _open(path: str, role: str) -> Iterator[rasterio.DatasetReader]:
    """Open a raster, turning a missing or unreadable file into an error that names it and the fix.

    The error says which of these it is: a missing file or object, an unreachable storage endpoint,
    access denied, a server error, or (anything else GDAL refuses) a corrupt file.
    """
    if not storage.is_remote(path):  # one stat, and a plain sentence; remote: opening says the same
        local = Path(storage.local_path(path))
        if not local.exists():
            raise MissingRasterError(f"{role} raster {path} does not exist; check the path (and the working directory)")
        if local.is_dir():
            raise InputRasterError(f"{role} raster {path} is a folder; give the raster file inside it")
        if not os.access(local, os.R_OK):
            raise InputAccessDeniedError(f"{role} raster {path} is not readable: permission denied; "
                                         "check the file's permissions (chmod/chown) or run as its owner")
    try:
        with _rio(path) as src:
            yield src
    except _READ_ERRORS as exc:
        raise _failure(exc, path, role) from None


def read_info(path: str, role: str = "input") -> RasterInfo:
    """Read a raster's grid, band count, dtype and nodata, with clear errors for bad files.

    Args:
        path: local path or GDAL-readable URL.
        role: ``BEFORE``/``AFTER``, used in error messages.

    Raises:
        InputRasterError: missing, unreadable or truncated file.
        GridError: the raster has no CRS or no geotransform.
    """
    with _open(path, role) as src:
        return _info(src, path, role)


def _info(src: rasterio.DatasetReader, path: str, role: str) -> RasterInfo:
    shown = storage.redact_url(path)
    if src.crs is None:
        raise GridError(
            f"{role} raster {shown} has no CRS, so it cannot be placed on a map; assign one "
            "(e.g. gdal_edit.py -a_srs EPSG:32614 FILE) and run again"
        )
    if src.transform == Affine.identity():
        raise GridError(
            f"{role} raster {shown} has no geotransform (pixel grid without coordinates); "
            "georeference it first (gdal_edit.py -a_ullr / -a_srs)"
        )
    # Reading the last block catches truncated files before any work is done.
    src.read(window=RioWindow(src.width - 1, src.height - 1, 1, 1))
    dtypes = set(src.dtypes)
    if len(dtypes) != 1:
        raise InputRasterError(f"{role} raster {shown} mixes band types {sorted(dtypes)}; convert it to one type")
    grid = Grid(src.crs.to_wkt(), tuple(src.transform)[:6], src.width, src.height)
    return RasterInfo(path, grid, src.count, src.dtypes[0], src.nodata)


def same_crs(a_wkt: str, b_wkt: str) -> bool:
    """Whether two CRSs are equivalent."""
    return CRS.from_wkt(a_wkt) == CRS.from_wkt(b_wkt)


def bounds_in_crs(info: RasterInfo, dst_wkt: str) -> Bounds:
    """A raster's footprint expressed in another CRS."""
    return _transform_bounds(CRS.from_wkt(info.grid.crs_wkt), CRS.from_wkt(dst_wkt), *info.grid.bounds, densify_pts=21)


def _all_valid(src: rasterio.DatasetReader) -> bool:
    """Whether every pixel of ``src`` has data: no nodata value, internal or external mask, or alpha band."""
    return all(flags == [MaskFlags.all_valid] for flags in src.mask_flag_enums)


class AlignedPairReader:
    """Reads windows of both dates on the output grid (AFTER through a WarpedVRT when needed)."""

    def __init__(self, alignment: Alignment) -> None:
        self.alignment = alignment
        self._stack = ExitStack()
        self._sources: list = []

    def __enter__(self) -> AlignedPairReader:
        a = self.alignment
        try:
            for info, role in ((a.before, "BEFORE"), (a.after, "AFTER")):
                try:
                    src = self._stack.enter_context(_rio(info.path))
                    if role == "AFTER" and a.warp_after:
                        g = a.grid
                        src = self._stack.enter_context(WarpedVRT(
                            src, crs=CRS.from_wkt(g.crs_wkt), transform=Affine(*g.transform), width=g.width,
                            height=g.height, resampling=Resampling.bilinear,
                            # Without a nodata value the VRT needs an alpha band to say where AFTER has no data.
                            add_alpha=src.nodata is None,
                        ))
                except _READ_ERRORS as exc:
                    raise _failure(exc, info.path, role) from None
                self._sources.append(src)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()

    def _date(self, i: int, window: RioWindow, data: bool, out: np.ndarray | None = None
              ) -> tuple[np.ndarray | None, np.ndarray]:
        """One date's bands (if ``data``; into ``out`` if given) and where it has data (nodata, GDAL mask/alpha, NaN)."""
        info, role = ((self.alignment.before, "BEFORE"), (self.alignment.after, "AFTER"))[i]
        src = self._sources[i]
        try:
            image = (src.read(list(range(1, info.count + 1)), window=window, out=out)
                     if data or info.dtype[0] == "f" else None)
            if _all_valid(src):  # no nodata, mask or alpha: GDAL would only fill 255s
                mask = np.ones((int(window.height), int(window.width)), bool)
            else:
                mask = src.dataset_mask(window=window) > 0
        except _READ_ERRORS as exc:
            rows, cols = window.toranges()
            raise _failure(exc, info.path, role, f"rows {rows[0]}-{rows[1]}, columns {cols[0]}-{cols[1]}") from None
        if image is not None and image.dtype.kind == "f":
            mask &= ~np.isnan(image).any(axis=0)
        return image, mask

    def read(self, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``image (2, bands, h, w)`` in the common dtype and ``valid (h, w)`` (both dates have data).

        A date already in the common dtype is read straight into its half of the result (no stack).
        """
        window = RioWindow(x0, y0, x1 - x0, y1 - y0)
        a = self.alignment
        image = np.empty((2, a.before.count, y1 - y0, x1 - x0), a.dtype)
        valid = None
        for i, info in enumerate((a.before, a.after)):
            direct = np.dtype(info.dtype) == image.dtype
            date, mask = self._date(i, window, data=True, out=image[i] if direct else None)
            if not direct:
                image[i] = date
            valid = mask if valid is None else valid & mask
        return image, valid

    def masks(self, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
        """Where BEFORE and where AFTER have data in a window (bands are read only for float data's NaN)."""
        window = RioWindow(x0, y0, x1 - x0, y1 - y0)
        return self._date(0, window, data=False)[1], self._date(1, window, data=False)[1]


@dataclass(frozen=True)
class Coverage:
    """Whether BEFORE, AFTER, and both at one pixel, have data where their footprints overlap."""

    before: bool
    after: bool
    both: bool


_SAMPLES = 8  # the first look: an 8 x 8 grid of small windows spread over the overlap
_SAMPLE_SIDE = 64
_SCAN_SIDE = 1024  # the full scan's windows (a multiple of the usual 256/512 blocks)


def _overlap_window(a: Alignment) -> tuple[int, int, int, int]:
    """The output-grid pixels ``(y0, y1, x0, x1)`` AFTER's footprint covers (the whole grid when aligned)."""
    g = a.grid
    full = (0, g.height, 0, g.width)
    if not a.warp_after:
        return full
    left, bottom, right, top = bounds_in_crs(a.after, g.crs_wkt)
    inv = ~Affine(*g.transform)
    xs, ys = zip(*(inv * corner for corner in ((left, bottom), (left, top), (right, bottom), (right, top))))
    y0, y1 = max(0, int(np.floor(min(ys)))), min(g.height, int(np.ceil(max(ys))))
    x0, x1 = max(0, int(np.floor(min(xs)))), min(g.width, int(np.ceil(max(xs))))
    return (y0, y1, x0, x1) if y1 > y0 and x1 > x0 else full


def _sample_windows(y0: int, y1: int, x0: int, x1: int) -> list[tuple[int, int, int, int]]:
    def starts(lo: int, hi: int) -> list[int]:
        side = min(_SAMPLE_SIDE, hi - lo)
        return sorted({min(hi - side, max(lo, int(lo + (k + 0.5) * (hi - lo) / _SAMPLES) - side // 2))
                       for k in range(_SAMPLES)})

    hy, hx = min(_SAMPLE_SIDE, y1 - y0), min(_SAMPLE_SIDE, x1 - x0)
    return [(y, y + hy, x, x + hx) for y in starts(y0, y1) for x in starts(x0, x1)]


def overlap_coverage(alignment: Alignment) -> Coverage:
    """Find out whether the pair has a pixel where both dates have data (what a map needs), cheaply.

    First look: 64 windows of 64 x 64 pixels spread evenly over the overlap, a few dozen block reads
    whatever the scene size. If they hold a pixel valid in both dates, that settles it. Otherwise a
    full scan of the overlap's masks in 1024-pixel windows decides (stopping at the first pixel valid
    in both), so a pair is never judged empty for valid pixels the sample missed; that costs one read
    of the masks, less than the ingest it saves.
    """
    y0, y1, x0, x1 = _overlap_window(alignment)
    seen_before = seen_after = False
    scan = [(wy, min(wy + _SCAN_SIDE, y1), wx, min(wx + _SCAN_SIDE, x1))
            for wy in range(y0, y1, _SCAN_SIDE) for wx in range(x0, x1, _SCAN_SIDE)]
    with AlignedPairReader(alignment) as reader:
        for window in [*_sample_windows(y0, y1, x0, x1), *scan]:
            before, after = reader.masks(*window)
            seen_before, seen_after = seen_before or bool(before.any()), seen_after or bool(after.any())
            if (before & after).any():
                return Coverage(True, True, True)
    return Coverage(seen_before, seen_after, False)


def read_raster(path: str, band: int = 1) -> tuple[np.ndarray, Grid, np.ndarray]:
    """Read one band whole (small rasters: labels, test outputs): data, grid and valid mask."""
    info = read_info(path, "raster")
    with _rio(path) as src:
        data = src.read(band)
        valid = src.read_masks(band) > 0
    return data, info.grid, valid


def read_metadata(path: str, role: str = "raster") -> tuple[dict[str, str], list[str]]:
    """Dataset-level tags and band descriptions ('' where a band has none) of a raster."""
    with _open(path, role) as src:
        return dict(src.tags()), [d or "" for d in src.descriptions]


def read_on_grid(path: str, grid: Grid, band: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """One band warped onto ``grid`` with nearest neighbour (labels), and where it has data."""
    with _rio(path) as src, WarpedVRT(
            src, crs=CRS.from_wkt(grid.crs_wkt), transform=Affine(*grid.transform), width=grid.width,
            height=grid.height, resampling=Resampling.nearest, add_alpha=src.nodata is None) as vrt:
        return vrt.read(band), vrt.dataset_mask() > 0


def warp_to(src_path: str, dst_path: str, crs: str, resolution: float) -> str:
    """Warp a raster to another CRS and resolution (bilinear; nodata 0), e.g. an AFTER scene to UTM."""
    from rasterio.warp import calculate_default_transform, reproject

    dst_crs = CRS.from_user_input(crs)
    with _rio(src_path) as src:
        transform, w, h = calculate_default_transform(src.crs, dst_crs, src.width, src.height, *src.bounds,
                                                      resolution=resolution)
        out = np.zeros((src.count, h, w), dtype=src.dtypes[0])
        reproject(src.read(), out, src_transform=src.transform, src_crs=src.crs, dst_transform=transform,
                  dst_crs=dst_crs, resampling=Resampling.bilinear, dst_nodata=0)
    with rasterio.open(dst_path, "w", driver="GTiff", width=w, height=h, count=out.shape[0], dtype=out.dtype,
                       crs=dst_crs, transform=transform, nodata=0) as dst:
        dst.write(out)
    return dst_path


def _cog_options(dtype: str, compress: str = "deflate") -> dict[str, object]:
    if compress not in COMPRESSIONS:
        raise ValueError(f"compress must be one of {', '.join(COMPRESSIONS)}, got {compress!r}")
    return {
        "COMPRESS": compress.upper(), "PREDICTOR": "YES" if dtype != "uint8" else "NO", "BLOCKSIZE": COG_BLOCKSIZE,
        "OVERVIEWS": "AUTO", "RESAMPLING": "AVERAGE", "BIGTIFF": "IF_SAFER",
    }


def write_cog(path: str, grid: Grid, count: int, dtype: str,
              blocks: Iterable[tuple[tuple[int, int, int, int], np.ndarray, np.ndarray]],
              *, nodata: float | None = None, tags: dict[str, str] | None = None,
              descriptions: tuple[str, ...] = (), compress: str = "deflate") -> None:
    """Write a Cloud-Optimized GeoTIFF block by block, atomically, at a path or URL.

    Blocks are ``((y0, x0, h, w), data (count, h, w), valid (h, w))``, in any order. They go
    to a tiled temporary GeoTIFF (with an internal mask for nodata), which GDAL's COG driver
    turns into the final layout with overviews, compressed with ``compress`` (one of
    :data:`pipeline.config.COMPRESSIONS`); only the finished file is published at ``path``
    (:func:`pipeline.io.fs.publish`), so a failure never leaves a partial map there. Memory
    stays at a few blocks.
    """
    options = _cog_options(dtype, compress)  # a bad codec fails before anything is written
    fs.publish(path, lambda cog: _write_cog(cog, grid, count, dtype, blocks, nodata, tags, descriptions, options))


def _write_cog(cog: str, grid: Grid, count: int, dtype: str,
               blocks: Iterable[tuple[tuple[int, int, int, int], np.ndarray, np.ndarray]],
               nodata: float | None, tags: dict[str, str] | None, descriptions: tuple[str, ...],
               options: dict[str, object]) -> None:
    tmp_tif = cog + ".tiles.tif"  # beside the (temporary) COG: removed whatever happens
    profile = {
        "driver": "GTiff", "width": grid.width, "height": grid.height, "count": count, "dtype": dtype,
        "crs": CRS.from_wkt(grid.crs_wkt), "transform": Affine(*grid.transform), "nodata": nodata,
        "tiled": True, "blockxsize": COG_BLOCKSIZE, "blockysize": COG_BLOCKSIZE,
        # Read once by the COG driver: zstd level 1 instead of DEFLATE took publishing an 8192² map
        # from 2.9 to 2.1 CPU seconds, and keeps the temporary file compressed (scenes of gigapixels).
        "compress": "zstd", "zstd_level": 1,
        "BIGTIFF": "IF_SAFER",
    }
    try:
        with rasterio.Env(**_GDAL_ENV):
            with rasterio.open(tmp_tif, "w", **profile) as dst:
                for (y0, x0, h, w), data, valid in blocks:
                    window = RioWindow(x0, y0, w, h)
                    dst.write(data, window=window)
                    dst.write_mask(np.where(valid, 255, 0).astype("uint8"), window=window)
                for i, text in enumerate(descriptions, start=1):
                    dst.set_band_description(i, text)
                if tags:
                    dst.update_tags(**tags)
            rasterio.shutil.copy(tmp_tif, cog, driver="COG", **options)
    finally:
        if os.path.exists(tmp_tif):
            os.unlink(tmp_tif)


def cog_problems(path: str) -> list[str]:
    """Why ``path`` is not a valid Cloud-Optimized GeoTIFF (empty list: it is one)."""
    with _open(path, "output") as src:
        return _cog_problems(src)


def _cog_problems(src: rasterio.DatasetReader) -> list[str]:
    problems = []
    if src.driver != "GTiff":
        problems.append(f"driver is {src.driver}, not GTiff")
    if src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") != "COG":
        problems.append("GDAL does not report LAYOUT=COG (IFDs/tiles not in COG order)")
    if not src.profile.get("tiled"):
        problems.append("not internally tiled")
    if max(src.width, src.height) > COG_BLOCKSIZE and not src.overviews(1):
        problems.append("no overviews although larger than one block")
    return problems


def inspect_cog(path: str, role: str = "output") -> tuple[RasterInfo, list[str], dict[str, str]]:
    """A map's info (read to its last block), COG problems and tags, in one open.

    One open means one set of requests for a URL. Returns the info, why it is not a valid COG
    (empty: it is one) and its dataset tags.
    """
    with _open(path, role) as src:
        return _info(src, path, role), _cog_problems(src), dict(src.tags())


def iter_blocks(height: int, width: int, size: int = COG_BLOCKSIZE) -> Iterator[tuple[int, int, int, int]]:
    """Row-major ``(y0, x0, h, w)`` blocks covering a grid."""
    for y0 in range(0, height, size):
        for x0 in range(0, width, size):
            yield y0, x0, min(size, height - y0), min(size, width - x0)


def read_image(path: str, role: str = "image") -> tuple[np.ndarray, np.ndarray]:
    """Read every band of a raster whole (dataset tiles: GeoTIFF, PNG, ...): ``(C, H, W)`` and valid ``(H, W)``.

    Unlike :func:`read_info` it does not require a CRS (training crops are often plain PNGs).
    """
    with _open(path, role) as src:
        try:
            return src.read(), src.dataset_mask() > 0
        except RasterioError as exc:
            raise InputRasterError(f"{role} {storage.redact_url(path)} cannot be read ({storage.scrub(str(exc).strip()[:200])}); "
                                   "the file is corrupt or truncated") from exc


def shapes(labels: np.ndarray, transform: tuple[float, float, float, float, float, float],
           connectivity: int = 4) -> Iterator[tuple[dict, int]]:
    """Polygons of the labelled (non-zero) regions of an integer image, as GeoJSON-like dicts.

    A thin wrapper over ``rasterio.features.shapes`` (GDAL's ``GDALPolygonize``): one polygon,
    holes kept, per region of equal value that is connected under ``connectivity`` (4 or 8).

    Args:
        labels: ``(h, w)`` int32 (or smaller) labels, 0 = background (left out).
        transform: GDAL-order affine of the image's pixel grid (identity gives pixel coordinates).
        connectivity: 4 (edge neighbours) or 8 (edges and corners).

    Yields:
        ``(geometry, value)`` pairs.
    """
    from rasterio.features import shapes as _shapes

    labels = np.ascontiguousarray(labels, dtype=np.int32)
    for geom, value in _shapes(labels, mask=labels != 0, connectivity=connectivity, transform=Affine(*transform)):
        yield geom, int(value)


def _decimated_grid(grid: Grid, max_side: int) -> Grid:
    """``grid`` resampled so that its longer side is at most ``max_side`` pixels (never upsampled)."""
    scale = max(grid.width, grid.height) / max_side
    if scale <= 1:
        return grid
    width, height = max(1, min(max_side, round(grid.width / scale))), max(1, min(max_side, round(grid.height / scale)))
    sx, sy = grid.width / width, grid.height / height
    a, b, c, d, e, f = grid.transform
    return Grid(grid.crs_wkt, (a * sx, b * sy, c, d * sx, e * sy, f), width, height)


def read_decimated(path: str, bands: tuple[int, ...] | list[int], max_side: int, *, grid: Grid | None = None,
                   resampling: str = "average", role: str = "raster") -> tuple[np.ndarray, np.ndarray, Grid]:
    """A reduced view of a raster, at most ``max_side`` pixels on its longer side, for quicklooks.

    Reads go through GDAL's decimated ``RasterIO`` (``out_shape``), which takes the nearest
    overview when the file has them, so the full-resolution scene is never held in memory.
    With ``grid`` the raster is warped onto that grid's reduced version (a ``WarpedVRT``, as
    :class:`AlignedPairReader` does at full resolution), which is how AFTER (or a mask) is put
    on BEFORE's grid.

    Args:
        path: local path or URL of the raster.
        bands: 1-based band indexes to read.
        max_side: the longest side of the result in pixels.
        grid: the full-resolution grid to put the raster on (default: its own).
        resampling: a rasterio ``Resampling`` name (``average`` for images, ``nearest`` for masks).
        role: how error messages name the raster (``BEFORE``, ``AFTER``, ...).

    Returns:
        ``data (len(bands), h, w)``, ``valid (h, w)`` and the reduced grid the pixels lie on.
    """
    method = Resampling[resampling]
    bands = [int(b) for b in bands]
    with _open(path, role) as src:
        own = Grid(src.crs.to_wkt() if src.crs else "", tuple(src.transform)[:6], src.width, src.height)
        target = grid or own
        small = _decimated_grid(target, max_side)
        shape = (len(bands), small.height, small.width)
        on_grid = grid is None or (
            (own.width, own.height) == (grid.width, grid.height) and src.crs is not None
            and same_crs(own.crs_wkt, grid.crs_wkt)
            and all(abs(p - q) <= 1e-6 * max(grid.resolution) for p, q in zip(own.transform, grid.transform)))
        if on_grid:
            data = src.read(bands, out_shape=shape, resampling=method)
            valid = src.dataset_mask(out_shape=shape[1:], resampling=Resampling.nearest) > 0
        else:
            with WarpedVRT(src, crs=CRS.from_wkt(small.crs_wkt), transform=Affine(*small.transform),
                           width=small.width, height=small.height, resampling=method,
                           add_alpha=src.nodata is None) as vrt:
                data = vrt.read(bands)
                valid = vrt.dataset_mask() > 0
    if data.dtype.kind == "f":
        valid &= ~np.isnan(data).any(axis=0)
    return data, valid, small
