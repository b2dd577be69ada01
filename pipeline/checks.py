"""Everything checkable before Prefect's API and Ray start: options, places, inputs, model and weights.

:func:`preflight` runs in the calling process (the CLI calls it through its session before the flow
starts, and the flow finds the plan in that session). A user error ends here in one paragraph,
and the checks run cheapest first, so a typo is answered before torch is even imported:

1. the output is given and is not an input (option values were checked when the run objects were made);
2. every place's URL protocol (inputs, output and extras, work folder, weights URL);
3. every remote place's storage endpoint answers (a TCP connect, a few seconds at most: fsspec
   would retry an unreachable endpoint for tens of seconds);
4. the output's location: a folder or a bucket that exists, writable, the output absent unless
   ``--overwrite``; the extras' (``--vector``, ``--stats``, ...) locations and the work folder's;
5. both inputs' headers and last block, and the output grid (CRS, overlap, bands);
6. the pair has at least one pixel where both dates have data (:func:`check_coverage`);
7. the model and its weights (built once, they must fit).
"""
from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np

from pipeline import storage
from pipeline.archive.pairs import ManifestError
from pipeline.config import ArchiveOptions, ConfigError, MapSettings, MapSpec, RunOptions, check_destination
from pipeline.errors import (
    AccessDeniedError,
    ChangemapError,
    EndpointUnreachableError,
    GridError,
    NoValidPixelsError,
    OutputExistsError,
    OutputLocationError,
    StorageError,
    one_paragraph,
    storage_failure,
)
from pipeline.grid import Alignment, RasterInfo, plan_alignment
from pipeline.io import fs, raster, read

if TYPE_CHECKING:  # the model zoo imports torch: only the model check needs it
    from models import LoadedWeights, WeightsMeta
    from pipeline.archive.pairs import Plan

_PROBE_TIMEOUT_S = 3.0
_OBJECT_STORES = ("s3", "gs", "az")


@dataclass(frozen=True)
class RunPlan:
    """A run resolved by the checks: the map with its model chosen, the grid, the model's weights and bands.

    ``threshold`` is None when the scene decides it (Otsu's over the map's scores, once they are
    all known); ``threshold_method`` says how it is found: ``given``, ``weights`` or ``otsu``.
    """

    spec: MapSpec  # with the model resolved
    alignment: Alignment
    loaded: LoadedWeights | None
    meta: WeightsMeta
    bands: tuple[int, ...]
    threshold: float | None
    threshold_method: str = "weights"
    kind: str = "deep"  # the model's: deep or scene-fitted


def check_model(model: str, weights: str | None, in_channels: int | None, statistics: str, tile: int,
                halo: int, session: Any = None) -> tuple[LoadedWeights | None, WeightsMeta]:
    """Build the model once with its weights (they must fit) and check it can serve ``statistics``.

    With a ``session`` (:class:`pipeline.session.Session`) it is built once in that session.
    """
    if session is not None:
        return session.model(model, weights, in_channels, statistics, tile, halo)
    return build_checked(model, weights, in_channels, statistics, tile, halo)


def build_checked(model: str, weights: str | None, in_channels: int | None, statistics: str, tile: int,
                  halo: int) -> tuple[LoadedWeights | None, WeightsMeta]:
    """Build the model with its weights and check it can serve the run: scene statistics, a scene-fitted model's rules."""
    from pipeline import loader

    net, meta, loaded = loader.build(model, weights, in_channels)
    if net.kind == "scene-fitted":
        loader.check_fitted(net, meta.model, weights, statistics, halo)
    elif statistics == "scene":
        loader.check_scene_statistics(net, meta.model, tile, halo)
    return loaded, meta


def date_info(url: str, role: str, *, assets: tuple[str, ...] | None = None, cloud_mask: bool = False,
              default_bands: int | None = None) -> RasterInfo:
    """What a run needs to know about one date: a raster's header, or a STAC item with its chosen bands.

    ``default_bands`` is the number of bands an item gives without ``assets`` (3: red, green, blue;
    None: every spectral band), see :func:`pipeline.io.items.load_item`.
    """
    from pipeline.io import items

    if items.is_item(url):
        date = items.load_item(url, assets, cloud_mask=cloud_mask, default_bands=default_bands)
        return replace(items.read_info(date), item=date)
    if assets or cloud_mask:
        option = "--assets" if assets else "--cloud-mask"
        raise ConfigError(f"{option} picks the bands and mask of dates given as STAC items, but {role} "
                          f"{storage.redact_url(url)} is a raster; choose a raster's bands with --bands")
    return raster.read_info(url, role)


def plan_grid(before: str, after: str, *, assets: tuple[str, ...] | None = None, cloud_mask: bool = False,
              default_bands: int | None = 3) -> Alignment:
    """Read both dates' metadata and decide the output grid (BEFORE's) and AFTER's warp."""
    b = date_info(before, "BEFORE", assets=assets, cloud_mask=cloud_mask, default_bands=default_bands)
    a = date_info(after, "AFTER", assets=assets, cloud_mask=cloud_mask, default_bands=default_bands)
    if (b.item is None) != (a.item is None):
        raise GridError(f"BEFORE {storage.redact_url(before)} and AFTER {storage.redact_url(after)} must both be STAC "
                        "items or both be rasters: an item's bands are read as reflectance (scaled), a raster's as "
                        "they are stored, so the two would not compare")
    same = raster.same_crs(b.grid.crs_wkt, a.grid.crs_wkt)
    footprint = a.grid.bounds if same else raster.bounds_in_crs(a, b.grid.crs_wkt)
    dtype = str(np.result_type(b.dtype, a.dtype))
    return plan_alignment(b, a, same_crs=same, after_bounds_in_before_crs=footprint, dtype=dtype)


def check_coverage(alignment: Alignment) -> None:
    """Refuse a pair without a single pixel where both dates have data.

    Such a map would be all nodata, which a run would otherwise write after a full pass through
    the model and report as a success. This is a refusal, not a warning, because nothing useful
    can come out of it and the usual cause is a wrong nodata value or the wrong file. The look is
    cheap (a sample of small windows; a full scan of the masks only when the sample finds nothing):
    see :func:`pipeline.io.read.overlap_coverage`.
    """
    cover = read.overlap_coverage(alignment)
    if cover.both:
        return
    a = alignment
    fix = ("check its nodata value and mask (gdalinfo -stats), or pass another scene; a map of it would be "
           "all nodata")
    for seen, info, role, other in ((cover.before, a.before, "BEFORE", "AFTER"),
                                    (cover.after, a.after, "AFTER", "BEFORE")):
        if not seen:
            nodata = f" (nodata = {info.nodata:g})" if info.nodata is not None else ""
            raise NoValidPixelsError(f"{role} raster {storage.redact_url(info.path)} has no valid pixel where it "
                                     f"overlaps {other}: every pixel there is nodata or masked{nodata}; {fix}")
    raise NoValidPixelsError(
        f"BEFORE {storage.redact_url(a.before.path)} and AFTER {storage.redact_url(a.after.path)} both have data, "
        "but never at the same pixel, so there is nothing to compare; pass two scenes whose valid areas overlap")


# --- places: protocols, endpoints, output locations -------------------------------------------------

def check_protocol(url: str, role: str) -> None:
    """Refuse a URL whose protocol fsspec does not know or whose driver is not installed."""
    fs.check_protocol(url, role)


def _endpoint_address(url: str) -> tuple[str, str, int] | None:
    """The endpoint a remote place is served from (as shown, host, port), where one is known."""
    endpoint = raster.storage_endpoint(url)
    if not endpoint:
        return None
    parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
    if not parts.hostname:
        return None
    return endpoint, parts.hostname, parts.port or (80 if parts.scheme == "http" else 443)


def check_endpoint(url: str, role: str) -> None:
    """Refuse a remote place whose storage endpoint does not accept connections (a few seconds at most)."""
    address = _endpoint_address(url) if storage.is_remote(url) else None
    if address is None:
        return
    endpoint, host, port = address
    try:
        socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S).close()
    except OSError as exc:
        why = "unknown host" if isinstance(exc, socket.gaierror) else (
            "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__))
        setting = ("endpoint_url in --storage-options (or AWS_ENDPOINT_URL)" if storage.protocol(url) == "s3"
                   else "the host and port in the URL")
        raise EndpointUnreachableError(
            f"{role} {storage.redact_url(url)}: the storage endpoint {endpoint} cannot be reached ({why}); check "
            f"{setting}, that the server is up, and the network") from None


def _storage_error(exc: BaseException, url: str, role: str, doing: str) -> ChangemapError:
    """The user error an fsspec failure on a place amounts to (endpoint, permission, server)."""
    detail = one_paragraph(storage.scrub(f"{type(exc).__name__}: {exc}"))[:300]
    kind = "denied" if isinstance(exc, PermissionError) else storage_failure(detail)
    shown = storage.redact_url(url)
    if kind == "unreachable":
        return EndpointUnreachableError(
            f"{role} {shown}: the storage endpoint cannot be reached while {doing} ({detail}); check endpoint_url "
            "in --storage-options (or AWS_ENDPOINT_URL), that the server is up, and the network")
    if kind == "denied":
        return AccessDeniedError(
            f"{role} {shown}: access denied while {doing} ({detail}); check the credentials (environment, profile "
            "or --storage-options) and the permissions on the bucket or folder")
    return StorageError(f"{role} {shown}: the storage failed while {doing} ({detail}); check the URL and the "
                        "storage, and try again")


def _bucket(url: str) -> str | None:
    """``proto://bucket`` of an object-store URL."""
    if storage.protocol(url) not in _OBJECT_STORES:
        return None
    bucket = url.split("://", 1)[1].split("/", 1)[0]
    return f"{url.split('://', 1)[0]}://{bucket}" if bucket else None


def _check_remote_place(url: str, role: str, *, probe_write: bool) -> None:
    """An object-store place: its bucket exists, and (``probe_write``) a probe object can be written there."""
    bucket = _bucket(url)
    if bucket is None:
        return
    try:
        found = fs.exists(bucket)
    except Exception as exc:  # noqa: BLE001 - fsspec drivers raise their own types
        raise _storage_error(exc, url, role, f"looking up the bucket {bucket}") from None
    if not found:
        raise OutputLocationError(f"{role} {storage.redact_url(url)}: the bucket {bucket} does not exist; create it "
                                  "or check the URL")
    if probe_write:
        probe = storage.join(storage.parent(url), f".changemap-write-probe-{uuid.uuid4().hex}")
        try:
            fs.write_text(probe, "")
        except Exception as exc:  # noqa: BLE001
            raise _storage_error(exc, url, role, "writing a probe object beside it") from None
        try:
            fs.remove_tree(probe)
        except Exception:  # noqa: BLE001 - a leftover empty probe is harmless; the write is what mattered
            pass


def check_output(output: str, overwrite: bool, role: str = "output") -> None:
    """The output's place can be written, and the output is absent unless ``overwrite``.

    Locally: its nearest existing folder is a folder and writable (folders below it are created).
    On object stores: the bucket exists and a probe object can be written and removed beside it.
    """
    check_protocol(output, f"--{role}")
    check_endpoint(output, f"--{role}")
    _check_file_place(output, f"--{role}")
    try:
        present = fs.exists(output)
    except Exception as exc:  # noqa: BLE001
        raise _storage_error(exc, output, f"--{role}", "checking whether it exists") from None
    if present and not overwrite:
        raise OutputExistsError(f"--{role} {output} already exists; pass --overwrite to replace it or choose another path")
    _check_remote_place(output, f"--{role}", probe_write=True)


def _check_file_place(url: str, role: str) -> None:
    try:
        fs.check_writable(url, role)
    except ChangemapError as exc:
        raise OutputLocationError(str(exc)) from None


def check_folder(url: str, role: str) -> None:
    """A folder a run writes into (``--workdir``): a folder or creatable, and writable."""
    check_protocol(url, role)
    check_endpoint(url, role)
    if storage.is_remote(url):
        _check_remote_place(storage.join(url, "x"), role, probe_write=False)
        return
    path = Path(storage.local_path(url)).absolute()
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputLocationError(f"{role} {path} cannot be used as a folder: {ancestor} is a file; choose a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputLocationError(f"{role} {path} cannot be written: no write permission in {ancestor}; choose a "
                                  "folder you can write to")


def _extras(run: RunOptions) -> list[tuple[str, str]]:
    return [(f"--{name}", url) for name in ("vector", "stats", "quicklook", "stac")
            if (url := getattr(run, name, None))]


def check_places(spec: MapSpec, run: RunOptions) -> None:
    """Every place the run reads or writes: protocols first (no I/O), then endpoints, then locations."""
    check_destination(spec, run)
    inputs = [("BEFORE raster", spec.before), ("AFTER raster", spec.after)]
    writes = [("--output", run.output), *_extras(run)]
    weights = [("--weights", spec.weights)] if spec.weights and "://" in spec.weights else []
    folders = [("--workdir", run.workdir)] if run.workdir else []
    for role, url in [*inputs, *writes, *weights, *folders]:
        check_protocol(url, role)
    taken = {storage.absolute(spec.before), storage.absolute(spec.after)}
    for role, url in writes:
        if storage.absolute(url) in taken:
            raise OutputLocationError(f"{role} {url} would overwrite an input or another output; choose another path")
        taken.add(storage.absolute(url))
    for role, url in [*inputs, *writes, *weights, *folders]:
        check_endpoint(url, role)
    check_output(run.output, run.overwrite)
    for role, url in _extras(run):
        _check_file_place(url, role)
        _check_remote_place(url, role, probe_write=False)
    for role, url in folders:
        check_folder(url, role)


def check_run(run: RunOptions) -> None:
    """The run's own places: the work folder."""
    if run.workdir:
        check_folder(run.workdir, "--workdir")


def preflight(spec: MapSpec, run: RunOptions, *, session: Any = None) -> RunPlan:
    """Check a run end to end without starting anything; raise a user error naming the fix.

    Cheapest first (see the module's docstring): places, then the inputs' headers, the pair's
    coverage, and last the model, whose import and build take the longest (once per ``session``).
    """
    check_places(spec, run)
    from pipeline.io.items import is_item

    def grid(kind: str | None) -> Alignment:
        # An item's default bands: red, green, blue for a deep model, every spectral band for a scene-fitted one.
        return plan_grid(spec.before, spec.after, assets=spec.assets, cloud_mask=spec.cloud_mask,
                         default_bands=None if kind == "scene-fitted" else 3)

    # Rasters (and items with --assets) are read before the model zoo is imported; items whose
    # default bands depend on the model's kind, right after.
    by_kind = not spec.assets and any(is_item(u) for u in (spec.before, spec.after))
    alignment = None if by_kind else grid(None)
    from pipeline import loader

    spec = spec.model_copy(update={"model": loader.choose_model(spec.model, spec.weights)})
    kind = loader.model_kind(spec.model)
    alignment = alignment or grid(kind)
    check_coverage(alignment)
    # A scene-fitted model takes every band of the rasters unless --bands picks some.
    bands_in = len(spec.bands) if spec.bands else (alignment.before.count if kind == "scene-fitted" else None)
    loaded, meta = check_model(spec.model, spec.weights, bands_in, spec.statistics, spec.tile, spec.halo, session)
    bands = loader.select_bands(meta, alignment.before.count, spec.bands)
    return RunPlan(spec, alignment, loaded, meta, bands, *_threshold(spec.threshold, kind, meta), kind=kind)


def _threshold(asked: float | str | None, kind: str, meta: WeightsMeta) -> tuple[float | None, str]:
    """The map's threshold and how it is found: asked for, the weights', or Otsu's over the scene (None until then).

    A scene-fitted model's default is Otsu's over the scene's scores (its sample fit gives the
    scale; the threshold over the whole scene takes its smoothing into account).
    """
    if isinstance(asked, float | int) and not isinstance(asked, bool):
        return float(asked), "given"
    if asked == "otsu" or kind == "scene-fitted":
        return None, "otsu"
    return meta.threshold, "weights"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


_SEARCH_OPTIONS = ("collections", "bbox", "intersects", "before_dates", "after_dates", "max_cloud", "dry_run")


def check_source(archive: ArchiveOptions) -> None:
    """One source of pairs (a manifest, two globs, or a catalog search with what it needs), and its date windows."""
    sources = [name for name, given in (("a MANIFEST", archive.manifest), ("--before/--after globs",
                                                                          archive.before or archive.after),
                                        ("--catalog", archive.catalog)) if given]
    if len(sources) > 1:
        raise ManifestError(f"give one source of pairs, not {' and '.join(sources)}")
    if not sources:
        raise ManifestError("an archive needs its pairs: a MANIFEST, both --before and --after glob patterns, or "
                            "--catalog with --collections, --before-dates and --after-dates")
    if (archive.before or archive.after) and not (archive.before and archive.after):
        raise ManifestError("the glob form needs both --before and --after glob patterns")
    search = [_flag(name) for name in _SEARCH_OPTIONS if getattr(archive, name) not in (None, False)]
    if not archive.catalog:
        if search:
            raise ManifestError(f"{', '.join(search)} describe a STAC search and need --catalog (a STAC API URL, "
                                "static catalog or stac-geoparquet file); give one, or leave them out")
        return
    missing = [_flag(n) for n in ("collections", "before_dates", "after_dates") if getattr(archive, n) is None]
    if missing:
        raise ManifestError(f"a search of --catalog needs {', '.join(missing)}, e.g. --collections sentinel-2-l2a "
                            "--before-dates 2023-06-01/2023-08-31 --after-dates 2024-06-01/2024-08-31")
    if archive.bbox and archive.intersects:
        raise ManifestError("give the area of interest once: --bbox or --intersects, not both")
    from pipeline.archive.windows import check_windows, parse_window

    check_windows(parse_window(archive.before_dates, "--before-dates"), parse_window(archive.after_dates, "--after-dates"))


def check_items(plan: Plan, settings: MapSettings, default_bands: int | None) -> int | None:
    """Every STAC Item of an archive's pairs has the asked bands (and mask); the band count of the first.

    Reads each Item's JSON (a few at a time), never a pixel. Returns None when no date is an Item.
    """
    import contextvars
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.io import items

    urls = list(dict.fromkeys(u for p in plan.pairs for u in (p.before, p.after) if items.is_item(u)))
    if not urls:
        return None

    def load(url: str) -> int:
        return len(items.load_item(url, settings.assets, cloud_mask=settings.cloud_mask,
                                   default_bands=default_bands).bands)

    with ThreadPoolExecutor(max_workers=min(8, len(urls)), thread_name_prefix="item-check") as ex:
        # each in a copy of this thread's context: the run's storage options go with it
        counts = [f.result() for f in [ex.submit(contextvars.copy_context().run, load, u) for u in urls]]
    return counts[0]


def check_archive(archive: ArchiveOptions, settings: MapSettings, run: RunOptions, session: Any = None) -> int:
    """What an archive run can check before Prefect and Ray: the pair source, the places and the model.

    The pairs are listed here (once per ``session``: the flow reuses the list), so a missing
    manifest or a glob matching nothing is said before anything starts; a catalog's search runs
    here too, and every chosen Item is read to check it has the asked bands: a bad search costs
    seconds, before anything starts or is written. Returns how many bands the model takes from
    each scene.
    """
    check_source(archive)
    places = [(role, url) for role, url in (("MANIFEST", archive.manifest), ("--before", archive.before),
                                            ("--after", archive.after), ("--catalog", archive.catalog),
                                            ("--output-prefix", archive.output_prefix))
              if url]
    for role, url in places:
        check_protocol(url, role)
    for role, url in places:
        if not (role == "--catalog" and storage.protocol(url) == "http"):  # an API: the search says it
            check_endpoint(url, role)
    check_run(run)
    from pipeline import loader

    model = loader.choose_model(settings.model, settings.weights)
    fitted = loader.model_kind(model) == "scene-fitted"
    bands_in = len(settings.bands) if settings.bands else None
    from pipeline.archive.sources import plan_pairs

    plan = session.pairs(archive) if session is not None else plan_pairs(archive)
    if archive.catalog:
        count = check_items(plan, settings, None if fitted else 3)
        if fitted and not bands_in:
            bands_in = count
    _, meta = check_model(model, settings.weights, bands_in, settings.statistics, settings.tile, settings.halo, session)
    return meta.in_channels
