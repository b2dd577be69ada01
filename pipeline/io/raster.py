"""Opening rasters with rasterio/GDAL: storage sessions, clear errors for bad files, a raster's metadata.

The raster modules of :mod:`pipeline.io` (this one, :mod:`pipeline.io.read` and
:mod:`pipeline.io.cog`) are the only ones that talk to rasterio; everything else in the
pipeline sees plain numpy arrays and the value objects of :mod:`pipeline.grid`.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import rasterio
from rasterio.crs import CRS
from rasterio.enums import MaskFlags
from rasterio.errors import RasterioError
from rasterio.session import AWSSession, AzureSession, GSSession
from rasterio.transform import Affine
from rasterio.warp import transform_bounds as _transform_bounds
from rasterio.windows import Window as RioWindow

from pipeline import storage
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
from pipeline.grid import Bounds, Grid, RasterInfo
from pipeline.io import fs

# Protocols GDAL reads itself through its virtual file systems (/vsis3/, /vsigs/, /vsiaz/,
# /vsicurl/): HTTP range requests for just the blocks a window needs, GDAL's block
# cache and its own retries. Anything else fsspec knows (memory://, ...) is read
# through an fsspec file object handed to GDAL (rasterio's ``opener``), still block by block.
_GDAL_PROTOCOLS = {"s3", "gs", "az", "http"}


def _endpoint(options: dict) -> str | None:
    url = options.get("endpoint_url") or (options.get("client_kwargs") or {}).get("endpoint_url")
    return url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


# GDAL retries a read that got HTTP 429 or 5xx (its default codes: 429, 500, 502, 503, 504) with an
# exponential backoff from 1 s (GDAL's /vsicurl/ and /vsis3/ family, RFC 6585); and merges the
# range requests of neighbouring blocks, so a COG window costs few requests.
HTTP_RETRIES = {"GDAL_HTTP_MAX_RETRY": "5", "GDAL_HTTP_RETRY_DELAY": "1", "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES"}


def _gdal_session(url: str) -> tuple[object | None, dict[str, str]]:
    """A rasterio session and GDAL options mirroring the fsspec storage options of ``url``."""
    proto = storage.protocol(url)
    opts = storage.options_for(url)
    config: dict[str, str] = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", **HTTP_RETRIES}
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

