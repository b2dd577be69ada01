"""The statement of a run: frozen, validated objects, stated once.

:class:`MapSpec` is what a change map *is* (inputs, model, weights, bands, tiling, statistics,
threshold, output type): it is stamped on the COG, compared whole by the archive's skip check
and hashed to find resumable work. :class:`RunOptions` is how a run goes and where its results
land (workers, batch size, work folder, Ray address, storage options, output paths): never
stamped. :class:`ProductSettings` is what defines the products besides the map (polygons'
minimum mapping unit and simplification): stamped on the products, so a change redoes them from
the map. :class:`ArchiveOptions` says which pairs an archive holds. The CLI's options are
derived from these fields (:mod:`pipeline.cli.options`), and the Prefect flows take the objects
as parameters (Prefect validates them).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from pipeline import storage
from pipeline.errors import ChangemapError

PROBABILITY_TYPES = ("uint8", "float32")
STATISTICS = ("window", "scene")
COMPRESSIONS = ("deflate", "zstd")  # the map's codecs: DEFLATE, read everywhere; ZSTD, GDAL 2.3 and later
VECTOR_FORMATS = ("gpkg", "parquet", "fgb", "geojson")


class ConfigError(ChangemapError):
    """An option value that cannot work."""


def option(default: Any = None, help: str = "", **cli: Any) -> Any:
    """A field with its CLI help; ``cli`` holds argparse extras (``flag``, ``short``, ``metavar``, ``positional``)."""
    return Field(default, description=help, json_schema_extra={"cli": cli} if cli else None)


class Frozen(BaseModel):
    """Frozen, unknown fields rejected; validation errors name the option and say what fits."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=False)
    what: ClassVar[str] = "options"

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(_message(exc, type(self).what, type(self))) from None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Any:
        """Build from a JSON-like mapping (unknown keys are an error)."""
        return cls(**dict(d))

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable dict (secrets stay masked)."""
        return self.model_dump(mode="json")

    def to_json(self) -> str:
        """JSON text with sorted keys."""
        return json.dumps(self.to_dict(), sort_keys=True)


def _message(exc: ValidationError, what: str, cls: type[BaseModel]) -> str:
    """One paragraph naming each bad option (as ``--name``) and what it must be."""
    unknown = [str(e["loc"][0]) for e in exc.errors() if e["type"] == "extra_forbidden"]
    parts = []
    if unknown:
        parts.append(f"unknown {what} {sorted(unknown)}; known: {sorted(cls.model_fields)}")
    for e in exc.errors():
        if e["type"] == "extra_forbidden":
            continue
        name = "--" + str(e["loc"][0]).replace("_", "-") if e["loc"] else what
        if e["type"] == "value_error":
            parts.append(str(e["ctx"]["error"]))
        elif e["type"] == "missing":
            parts.append(f"{name} is required")
        else:
            parts.append(f"{name}: {e['msg'][0].lower()}{e['msg'][1:]}, got {e.get('input')!r}")
    return "; ".join(parts)


def _one_of(v: Any, field: str, choices: tuple[str, ...]) -> Any:
    """``v`` if it is one of ``choices``; else the option, the choices and the value, in one line."""
    if v not in choices:
        raise ValueError(f"--{field} must be one of {', '.join(choices)}, got {v!r}")
    return v


class MapSettings(Frozen):
    """The settings that define a change map, whatever its inputs."""

    what: ClassVar[str] = "map settings"

    model: str | None = option(None, "registered model name or model config file (see `changemap models`); "
                                     "default: the model a changemap checkpoint given as --weights names, else tinycd")
    weights: str | None = option(None, "known weights name (e.g. levir, whu), a local checkpoint or a URL; "
                                       "'none' for random")
    bands: tuple[int, ...] | None = option(None, "1-based input bands for the model, e.g. 3,2,1 "
                                                 "(default: the weights' bands; every band for a scene-fitted model)",
                                           metavar="B,B,B")
    assets: tuple[str, ...] | None = option(
        None, "for dates given as STAC items: the bands, as asset keys or common names, e.g. red,green,blue,nir, "
              "each read from its own file onto the finest one's grid (default: red,green,blue for a deep model, "
              "every spectral band for a scene-fitted one)", metavar="NAME,NAME")
    cloud_mask: bool = option(False, "for dates given as STAC items: cloud, shadow and no-data pixels of the item's "
                                     "mask asset (Sentinel-2 SCL, Landsat QA_PIXEL) are nodata in both dates")
    tile: int = option(512, "core tile side in pixels (= zarr chunk side)")
    halo: int = option(64, "context margin around each tile in pixels")
    threshold: float | Literal["otsu"] | None = option(
        None, "threshold of the change score for the mask band, polygons and statistics: a number in (0, 1), or otsu "
              "(Otsu's over the scene's scores); default: the weights' (0.5 for TinyCD), otsu for scene-fitted models",
        metavar="T|otsu")
    statistics: Literal["window", "scene"] = option(
        "window", "window: InstanceNorm/squeeze-excite layers use each window's statistics (fast); scene: the "
                  "scene's, measured in extra passes, so the map equals one pass over the whole scene")
    probability: Literal["uint8", "float32"] = option("uint8", "band 1 type: uint8 scaled 0-255 or float32 0-1")
    mask: bool = option(False, "also write the binary change mask as band 2")

    @field_validator("tile")
    @classmethod
    def _tile(cls, v: int) -> int:
        if not 64 <= v <= 8192 or v % 16:
            raise ValueError(f"--tile must be a multiple of 16 between 64 and 8192, got {v}")
        return v

    @field_validator("threshold", mode="before")
    @classmethod
    def _threshold_form(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip().lower() == "otsu":
            return "otsu"
        if isinstance(v, str):
            try:
                return float(v)
            except ValueError:
                raise ValueError(f"--threshold takes a number between 0 and 1, or otsu; got {v!r}") from None
        return v

    @field_validator("threshold")
    @classmethod
    def _threshold(cls, v: float | str | None) -> float | str | None:
        if isinstance(v, float) and not 0.0 < v < 1.0:
            raise ValueError(f"--threshold must lie strictly between 0 and 1, got {v}")
        return v

    @field_validator("bands")
    @classmethod
    def _bands(cls, v: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if v is not None and (not v or min(v) < 1):
            raise ValueError(f"--bands are 1-based band numbers, got {v}")
        return v

    @field_validator("statistics", "probability", mode="before")
    @classmethod
    def _choice(cls, v: Any, info) -> Any:
        return _one_of(v, info.field_name, STATISTICS if info.field_name == "statistics" else PROBABILITY_TYPES)

    @model_validator(mode="after")
    def _halo(self) -> MapSettings:
        if not 0 <= self.halo < self.tile:
            raise ValueError(f"--halo must be between 0 and the tile size ({self.tile}), got {self.halo}")
        return self


class MapSpec(MapSettings):
    """What one change map is: its two inputs and the settings that define it."""

    what: ClassVar[str] = "run options"

    before: str = option(..., "BEFORE raster (its grid is the output grid)", positional=True)
    after: str = option(..., "AFTER raster (warped onto BEFORE's grid when it differs)", positional=True)

    @field_validator("before", "after")
    @classmethod
    def _path(cls, v: str, info) -> str:
        if not v:
            raise ValueError(f"{info.field_name} must be a path or URL, got an empty value")
        return v

    @classmethod
    def of(cls, before: str, after: str, settings: MapSettings) -> MapSpec:
        """The spec of one pair made with ``settings``."""
        return cls(before=before, after=after, **settings.model_dump(exclude_unset=True))

    def stamp(self) -> dict[str, Any]:
        """What is written on the map and compared by the archive: inputs as absolute paths or URLs."""
        return {**self.to_dict(), "before": storage.absolute(self.before), "after": storage.absolute(self.after)}

    def key(self) -> str:
        """A short hash of :meth:`stamp`: two runs with equal keys make the same map."""
        return hashlib.sha256(json.dumps(self.stamp(), sort_keys=True).encode()).hexdigest()[:16]


class RunOptions(Frozen):
    """How a run goes and where its results land; never stamped on the map."""

    what: ClassVar[str] = "run options"

    output: str | None = option(None, "output change map (Cloud-Optimized GeoTIFF)", short="-o")
    workers: int | None = option(None, "inference actors (default: one per GPU, else 1)")
    batch_size: int | None = option(None, "windows per forward pass (default: 16 on a GPU; on the CPU 4, "
                                          "1 for a scene-fitted model)")
    compile: bool = option(False, "compile the model with torch.compile in each actor (opt-in: slow to start, "
                                  "for long GPU runs)")
    workdir: str | None = option(None, "folder for the intermediate zarr stores (default: under $CHANGEMAP_CACHE/work, "
                                       "~/.cache/changemap/work; removed after success)")
    keep_workdir: bool = option(False, "keep the intermediate stores after success")
    overwrite: bool = option(False, "replace an existing output")
    compress: Literal["deflate", "zstd"] = option(
        "deflate", "the map's compression: deflate (every GIS reads it) or zstd (smaller files, as fast to "
                   "write; read by GDAL 2.3 and later: QGIS, rasterio, titiler)")
    ray_address: str | None = option(None, "attach to this Ray cluster (default: a local runtime)")
    vector: str | None = option(None, "also write change polygons here; format by extension: .gpkg, .parquet "
                                      "(GeoParquet), .fgb, .geojson", metavar="PATH")
    stats: str | None = option(None, "also write the change statistics as JSON here", metavar="PATH")
    quicklook: str | None = option(None, "also write a PNG: BEFORE | AFTER | AFTER with changes tinted",
                                   metavar="PATH")
    stac: str | None = option(None, "also write a STAC Item describing the map and its outputs", metavar="PATH")
    storage_options: SecretStr | None = option(
        None, "fsspec storage options (also given to GDAL), e.g. '{\"key\": ..., \"secret\": ..., "
              "\"endpoint_url\": ...}' or keyed by protocol '{\"s3\": {...}}'; default: environment", metavar="JSON")

    @field_validator("batch_size", "workers")
    @classmethod
    def _positive(cls, v: int | None, info) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"--{info.field_name.replace('_', '-')} must be at least 1, got {v}")
        return v

    @field_validator("compress", mode="before")
    @classmethod
    def _compress(cls, v: Any, info) -> Any:
        return _one_of(v, info.field_name, COMPRESSIONS)

    @field_validator("vector")
    @classmethod
    def _vector(cls, v: str | None) -> str | None:
        if v is not None and v.rsplit(".", 1)[-1].lower() not in VECTOR_FORMATS:
            raise ValueError(f"--vector {v}: the format comes from the extension; use one of "
                             f"{', '.join('.' + f for f in VECTOR_FORMATS)}")
        return v

    @field_validator("workdir")
    @classmethod
    def _workdir(cls, v: str | None) -> str | None:
        if v and v.startswith("memory://"):
            raise ValueError("--workdir memory:// lives inside one process, but Ray actors run in others; use a "
                             "local folder or shared storage (s3://, gs://, ...)")
        return v

    def storage_json(self) -> str | None:
        """The storage options' JSON text (the secret itself; never log it)."""
        return self.storage_options.get_secret_value() if self.storage_options else None


class ProductSettings(Frozen):
    """What defines the products besides the map: stamped on them, compared by the archive's skip check.

    A change here redoes a map's products (polygons, statistics, ...) from the map, not the map.
    """

    what: ClassVar[str] = "product settings"

    min_area: float = option(0.0, "minimum mapping unit in m²: smaller regions are dropped from the polygons "
                                  "and the region count (after merging across tiles)")
    simplify: float = option(0.0, "polygon simplification tolerance in map units (topology-preserving)")

    @field_validator("min_area", "simplify")
    @classmethod
    def _non_negative(cls, v: float, info) -> float:
        if v < 0:
            raise ValueError(f"--{info.field_name.replace('_', '-')} must be 0 or more, got {v}")
        return v


def check_destination(spec: MapSpec, run: RunOptions) -> None:
    """The output must be given and must not be one of the inputs."""
    if not run.output:
        raise ConfigError("--output is required: the path or URL of the change map to write")
    if run.output in (spec.before, spec.after):
        raise ConfigError(f"--output {run.output} would overwrite an input; choose another output path")


class ArchiveOptions(Frozen):
    """Which pairs an archive holds and where their maps go."""

    what: ClassVar[str] = "archive options"

    manifest: str | None = option(None, "CSV (id,before,after[,output]) or JSON-lines file, path or URL",
                                  positional=True)
    before: str | None = option(None, "glob of BEFORE rasters (quote it), e.g. 's3://b/2019/*.tif'")
    after: str | None = option(None, "glob of AFTER rasters (quote it)")
    pair_by: str = option("stem", "pair glob matches by file 'stem' or a regex with a named group, "
                                  "e.g. '(?P<tile>T\\d+)'")
    output_prefix: str = option(..., "folder or URL prefix: maps PREFIX/{id}.tif, statistics PREFIX/{id}.stats.json, "
                                     "archive-summary.csv/.json")
    concurrency: int = option(1, "pairs processed at once (sharing the model actors)")
    vector_format: Literal["gpkg", "parquet", "fgb", "geojson"] | None = option(
        None, "also write each pair's change polygons as PREFIX/{id}.FORMAT")
    quicklooks: bool = option(False, "also write each pair's quicklook PNG as PREFIX/{id}.png")
    stac: bool = option(False, "also write a STAC Item per pair (PREFIX/{id}/{id}.json) and a Collection of them "
                               "(PREFIX/collection.json)")
    catalog: str | None = option(None, "find the pairs in a STAC catalog: an API URL, a static catalog or collection "
                                       "JSON, or a stac-geoparquet file (path or any URL)", metavar="SOURCE")
    collections: tuple[str, ...] | None = option(None, "with --catalog: the collections to search, e.g. "
                                                       "sentinel-2-l2a", metavar="C,C")
    bbox: tuple[float, ...] | None = option(None, "with --catalog: the area of interest, west,south,east,north in "
                                                  "degrees (WGS 84)", metavar="W,S,E,N")
    intersects: str | None = option(None, "with --catalog: the area of interest as a GeoJSON geometry, Feature or "
                                          "FeatureCollection (text, path or URL)", metavar="GEOJSON")
    before_dates: str | None = option(None, "with --catalog: the BEFORE window START/END: dates, ISO times, "
                                            "now or now-Nd (e.g. now-395d/now-365d)", metavar="START/END")
    after_dates: str | None = option(None, "with --catalog: the AFTER window START/END", metavar="START/END")
    max_cloud: float | None = option(None, "with --catalog: the most cloud cover (percent, eo:cloud_cover) an item "
                                           "may have", metavar="PCT")
    dry_run: bool = option(False, "with --catalog: print the chosen pairs and write them as the manifest "
                                  "PREFIX/search-pairs.csv, then stop (no pixel is read)")

    @field_validator("concurrency")
    @classmethod
    def _concurrency(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"--concurrency must be at least 1, got {v}")
        return v

    @field_validator("bbox")
    @classmethod
    def _bbox(cls, v: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if v is None:
            return v
        if len(v) != 4:
            raise ValueError(f"--bbox takes four numbers west,south,east,north, got {len(v)}: {list(v)}")
        w, s, e, n = v
        if not (-180 <= w <= 180 and -180 <= e <= 180 and -90 <= s < n <= 90):
            raise ValueError(f"--bbox must be west,south,east,north in degrees (longitudes -180..180, latitudes "
                             f"-90..90, south below north), got {list(v)}")
        return v

    @field_validator("max_cloud")
    @classmethod
    def _max_cloud(cls, v: float | None) -> float | None:
        if v is not None and not 0 <= v <= 100:
            raise ValueError(f"--max-cloud is a percentage between 0 and 100, got {v:g}")
        return v

    @field_validator("collections")
    @classmethod
    def _collections(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is not None and not v:
            raise ValueError("--collections names at least one collection, e.g. sentinel-2-l2a")
        return v

    def source(self) -> str:
        """Where the pairs come from: ``manifest``, ``catalog`` or ``globs`` (:func:`pipeline.checks.check_archive`)."""
        return "manifest" if self.manifest else "catalog" if self.catalog else "globs"
