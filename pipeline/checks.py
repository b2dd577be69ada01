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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np

from pipeline import storage
from pipeline.archive.pairs import ManifestError
from pipeline.config import ArchiveOptions, MapSettings, MapSpec, RunOptions, check_destination
from pipeline.errors import (
    AccessDeniedError,
    ChangemapError,
    EndpointUnreachableError,
    NoValidPixelsError,
    OutputExistsError,
    OutputLocationError,
    StorageError,
    one_paragraph,
    storage_failure,
)
from pipeline.grid import Alignment, plan_alignment
from pipeline.io import fs, raster, read

if TYPE_CHECKING:  # the model zoo imports torch: only the model check needs it
    from models import LoadedWeights, WeightsMeta

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


def plan_grid(before: str, after: str) -> Alignment:
    """Read both rasters' metadata and decide the output grid (BEFORE's) and AFTER's warp."""
    b = raster.read_info(before, "BEFORE")
    a = raster.read_info(after, "AFTER")
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
    alignment = plan_grid(spec.before, spec.after)
    check_coverage(alignment)
    from pipeline import loader

    spec = spec.model_copy(update={"model": loader.choose_model(spec.model, spec.weights)})
    kind = loader.model_kind(spec.model)
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


def check_archive(archive: ArchiveOptions, settings: MapSettings, run: RunOptions, session: Any = None) -> int:
    """What an archive run can check before Prefect and Ray: the pair source, the places and the model.

    Returns how many bands the model takes from each scene.
    """
    if archive.manifest and (archive.before or archive.after):
        raise ManifestError("give either a MANIFEST or --before/--after globs, not both")
    if not archive.manifest and not (archive.before and archive.after):
        raise ManifestError("an archive needs a MANIFEST, or both --before and --after glob patterns")
    places = [(role, url) for role, url in (("MANIFEST", archive.manifest), ("--before", archive.before),
                                            ("--after", archive.after), ("--output-prefix", archive.output_prefix))
              if url]
    for role, url in places:
        check_protocol(url, role)
    for role, url in places:
        check_endpoint(url, role)
    check_run(run)
    from pipeline import loader

    model = loader.choose_model(settings.model, settings.weights)
    _, meta = check_model(model, settings.weights, len(settings.bands) if settings.bands else None,
                          settings.statistics, settings.tile, settings.halo, session)
    return meta.in_channels
