"""User-facing errors: each message names the problem and the fix.

Every class here is a user error: the CLI prints its message as one paragraph
(``changemap: error: ...``) and exits 2, wherever it was raised (in the checks before the
run, or inside the flow). Anything else is a bug or an infrastructure failure and keeps its
traceback.

The storage classes come in two flavours: a failure while reading an input raster is also an
:class:`InputRasterError` (callers that catch "this input cannot be used" keep working), the
same failure for an output place or a weights URL is a plain :class:`StorageError`.
"""
from __future__ import annotations

import re


class ChangemapError(Exception):
    """A problem with the inputs, options or environment of a run (not a bug)."""


class UnknownProtocolError(ChangemapError):
    """A URL's protocol is unknown to fsspec, or its driver is not installed."""


class StorageError(ChangemapError):
    """The storage behind a path or URL cannot serve it (server error, timeout, ...)."""


class EndpointUnreachableError(StorageError):
    """The storage endpoint cannot be reached (connection refused, unknown host, timeout)."""


class AccessDeniedError(StorageError):
    """The storage refuses access (HTTP 401/403, bad keys, no permission)."""


class InputRasterError(ChangemapError):
    """An input raster is missing, unreadable or unusable."""


class MissingRasterError(InputRasterError):
    """An input raster does not exist (no such file, no such object or bucket)."""


class CorruptRasterError(InputRasterError):
    """An input raster's bytes cannot be decoded (truncated, corrupt block, not a raster)."""


class NoValidPixelsError(InputRasterError):
    """The two dates have no pixel with data in common: the map would be empty."""


class InputUnreachableError(EndpointUnreachableError, InputRasterError):
    """An input raster's storage endpoint cannot be reached."""


class InputAccessDeniedError(AccessDeniedError, InputRasterError):
    """An input raster's storage refuses access."""


class InputStorageError(StorageError, InputRasterError):
    """An input raster's storage fails to serve it (server error)."""


class GridError(ChangemapError):
    """The two dates cannot be put on one grid (no CRS, no overlap, band mismatch)."""


class OutputExistsError(ChangemapError):
    """The output exists and overwriting was not asked for."""


class OutputLocationError(ChangemapError):
    """An output cannot be written where it was asked for (a file on the way, no permission)."""


# Substrings of GDAL/curl, botocore/s3fs, aiohttp and OS messages, by what went wrong. Checked
# in this order: a connection failure often also says "does not exist" further down the message.
_UNREACHABLE = ("could not connect", "couldn't connect", "failed to connect", "connection refused",
                "could not resolve host", "couldn't resolve host", "name or service not known",
                "temporary failure in name resolution", "nodename nor servname", "timed out", "timeout was reached",
                "connection reset", "connection aborted", "endpointconnectionerror", "connecttimeout",
                "cannot connect to host", "no route to host", "network is unreachable")
_DENIED = (re.compile(r"(response code|status|error occurred \(|http)\W{0,3}40[13]\b", re.I),
           "access denied", "accessdenied", "invalidaccesskeyid", "signaturedoesnotmatch", "forbidden",
           "expiredtoken", "invalidtoken", "authorizationfailure", "authenticationfailed", "permission denied",
           "permissionerror", "unauthorized")
_MISSING = (re.compile(r"(response code|status|error occurred \(|http)\W{0,3}404\b", re.I),
            "no such file", "does not exist", "nosuchkey", "nosuchbucket", "filenotfounderror", "blobnotfound",
            "containernotfound", "resourcenotfound")
_SERVER = (re.compile(r"(response code|status|error occurred \(|http)\W{0,3}5\d\d\b", re.I),
           "internalerror", "serviceunavailable", "slowdown", "internal server error", "bad gateway")


def _has(text: str, markers: tuple) -> bool:
    low = text.lower()
    return any(m.search(text) if isinstance(m, re.Pattern) else m in low for m in markers)


def storage_failure(detail: str) -> str | None:
    """What a low-level storage message says went wrong, if it says so.

    Returns:
        ``"unreachable"``, ``"denied"``, ``"missing"``, ``"server"`` or None (nothing storage-like:
        for a raster that means its bytes cannot be decoded).
    """
    for kind, markers in (("unreachable", _UNREACHABLE), ("denied", _DENIED), ("missing", _MISSING),
                          ("server", _SERVER)):
        if _has(detail, markers):
            return kind
    return None


def one_paragraph(text: str) -> str:
    """A message on one line: newlines and runs of blanks folded (a wrapped GDAL or botocore detail)."""
    return " ".join(text.split())
