"""User-facing errors: each message names the problem and the fix."""
from __future__ import annotations


class ChangemapError(Exception):
    """A problem with the inputs, options or environment of a run (not a bug)."""


class InputRasterError(ChangemapError):
    """An input raster is missing, unreadable or unusable."""


class GridError(ChangemapError):
    """The two dates cannot be put on one grid (no CRS, no overlap, band mismatch)."""


class OutputExistsError(ChangemapError):
    """The output exists and overwriting was not asked for."""
