"""The frozen, validated configuration of one change-detection run."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from pipeline.errors import ChangemapError

PROBABILITY_TYPES = ("uint8", "float32")
STATISTICS = ("window", "scene")


class ConfigError(ChangemapError):
    """An option value that cannot work."""


def frozen_from_dict(cls: type, d: Mapping[str, Any], error: type[Exception], what: str,
                     tuple_fields: tuple[str, ...] = ()) -> Any:
    """Build the frozen config ``cls`` from a JSON-like mapping: unknown keys are an error, lists become tuples."""
    known = {f.name for f in fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise error(f"unknown {what} {sorted(unknown)}; known: {sorted(known)}")
    kw = dict(d)
    for key in tuple_fields:
        if kw.get(key) is not None:
            kw[key] = tuple(kw[key])
    return cls(**kw)


@dataclass(frozen=True)
class RunConfig:
    """Everything ``changemap run`` needs; saved with the outputs it produced.

    Attributes:
        before, after, output: input rasters and output COG (paths).
        model: registered model name; weights: known name, path or URL (None: the model's default).
        tile, halo: core tile side and context margin in pixels (tile = zarr chunk side).
        statistics: ``window`` (each window normalised by its own statistics) or ``scene`` (scene
            statistics measured in extra passes: the map equals one pass over the whole scene).
        batch_size: windows per forward pass.
        threshold: binary-mask threshold (None: the weights' own).
        workers: inference actors (None: one per GPU, else one CPU actor).
        probability: ``uint8`` (0-255 scaled) or ``float32``.
        mask: also write the binary change mask as band 2.
        bands: 1-based input bands fed to the model (None: the weights' bands).
        workdir: where intermediate zarr stores go (None: a temporary folder).
        keep_workdir: keep the stores after success.
        overwrite: replace an existing output.
        ray_address: attach to this Ray cluster instead of starting a local runtime.
    """

    before: str
    after: str
    output: str
    model: str = "tinycd"
    weights: str | None = None
    tile: int = 512
    halo: int = 64
    statistics: str = "window"
    batch_size: int = 4
    threshold: float | None = None
    workers: int | None = None
    probability: str = "uint8"
    mask: bool = False
    bands: tuple[int, ...] | None = None
    workdir: str | None = None
    keep_workdir: bool = False
    overwrite: bool = False
    ray_address: str | None = None

    def __post_init__(self) -> None:
        def fail(msg: str) -> None:
            raise ConfigError(msg)

        for name in ("before", "after", "output"):
            if not getattr(self, name):
                fail(f"{name} must be a path or URL, got an empty value")
        if not 64 <= self.tile <= 8192 or self.tile % 16:
            fail(f"--tile must be a multiple of 16 between 64 and 8192, got {self.tile}")
        if not 0 <= self.halo < self.tile:
            fail(f"--halo must be between 0 and the tile size ({self.tile}), got {self.halo}")
        if self.statistics not in STATISTICS:
            fail(f"--statistics must be one of {', '.join(STATISTICS)}, got {self.statistics!r}")
        if self.batch_size < 1:
            fail(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            fail(f"--threshold must lie strictly between 0 and 1, got {self.threshold}")
        if self.workers is not None and self.workers < 1:
            fail(f"--workers must be at least 1, got {self.workers}")
        if self.probability not in PROBABILITY_TYPES:
            fail(f"--probability must be one of {', '.join(PROBABILITY_TYPES)}, got {self.probability!r}")
        if self.bands is not None and (not self.bands or min(self.bands) < 1):
            fail(f"--bands are 1-based band numbers, got {self.bands}")
        if self.workdir and self.workdir.startswith("memory://"):
            fail("--workdir memory:// lives inside one process, but Ray actors run in others; use a local folder "
                 "or shared storage (s3://, gs://, ...)")
        if self.before == self.output or self.after == self.output:
            fail(f"--output {self.output} would overwrite an input; choose another output path")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable)."""
        d = asdict(self)
        d["bands"] = list(self.bands) if self.bands else None
        return d

    def to_json(self) -> str:
        """JSON text, saved next to the outputs."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RunConfig":
        """Build from a mapping; unknown fields are an error."""
        return frozen_from_dict(cls, d, ConfigError, "run options", tuple_fields=("bands",))
