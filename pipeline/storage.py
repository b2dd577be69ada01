"""Where data lives: URL helpers and the storage credentials of a run (no I/O here).

Every input and output place is a local path or an fsspec URL (``s3://``, ``gs://``,
``az://``/``abfs://``, ``http(s)://``, ``file://``, ``memory://``). Credentials come
from the usual places (environment variables, profiles, instance roles: fsspec and
GDAL find those themselves) or from ``--storage-options``: a JSON object passed to
fsspec (``{"key": ..., "secret": ..., "endpoint_url": ...}``), either flat (applies to every
object store, not to HTTP) or keyed by protocol (``{"s3": {...}, "gs": {...}}``). The raster I/O
module mirrors them into GDAL's settings.

:class:`StorageOptions` never shows its values: ``repr``/``str`` list only the key names,
and it is kept out of saved configs, so secrets do not reach logs, errors or artifacts.
A process installs its options once (:func:`install`); Ray actors get them with their
job and install them in their own process.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pipeline.errors import ChangemapError

# Protocol aliases fsspec and GDAL agree on.
PROTOCOL_ALIASES = {"s3a": "s3", "gcs": "gs", "abfs": "az", "abfss": "az", "adl": "az", "https": "http"}
KNOWN_PROTOCOLS = ("s3", "gs", "az", "http", "file", "memory")


class StorageOptionsError(ChangemapError):
    """``--storage-options`` that cannot be used."""


def protocol(url: str) -> str:
    """The storage protocol of a path or URL (``file`` for local paths), aliases folded."""
    if "://" not in url:
        return "file"
    scheme = url.split("://", 1)[0].lower()
    return PROTOCOL_ALIASES.get(scheme, scheme)


def is_remote(url: str) -> bool:
    """True for anything that is not a local path or ``file://`` URL."""
    return protocol(url) != "file"


def local_path(url: str) -> str:
    """A ``file://`` URL or plain path as a local path."""
    return url[len("file://"):] if url.startswith("file://") else url


def absolute(url: str) -> str:
    """A local path made absolute (what a stamp or a hash must compare); URLs unchanged."""
    return url if is_remote(url) else os.path.abspath(local_path(url))


def join(base: str, *parts: str) -> str:
    """Join path parts with ``/`` (URLs) or the OS separator semantics of plain paths."""
    out = base
    for part in parts:
        out = out.rstrip("/") + "/" + part.lstrip("/") if out else part
    return out


def parent(url: str) -> str:
    """The folder (prefix) a path or URL lives in."""
    head = url.rstrip("/")
    return head.rsplit("/", 1)[0] if "/" in head else "."


def basename(url: str) -> str:
    """The last component of a path or URL."""
    return url.rstrip("/").rsplit("/", 1)[-1]


def redact_url(url: str) -> str:
    """A URL without user info and query string (signed URLs and ``user:pass@`` carry secrets)."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    netloc = ("***@" if parts.username or parts.password else "") + host
    query = "***" if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


@dataclass(frozen=True, repr=False, eq=True)
class StorageOptions:
    """fsspec storage options, per protocol (``"*"``: every object store). Values never printed."""

    _by_protocol: tuple[tuple[str, str], ...] = ()  # (protocol, JSON text) pairs, hashable and picklable

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any] | None) -> StorageOptions:
        """Flat ``{"key": ...}`` (every object store) or ``{"s3": {...}, "gs": {...}}``."""
        if not options:
            return cls()
        if not isinstance(options, Mapping):
            raise StorageOptionsError("--storage-options must be a JSON object, e.g. '{\"anon\": true}'")
        keyed = all(PROTOCOL_ALIASES.get(k, k) in KNOWN_PROTOCOLS and isinstance(v, Mapping)
                    for k, v in options.items())
        if keyed:
            items = [(PROTOCOL_ALIASES.get(k, k), dict(v)) for k, v in options.items()]
        else:
            items = [("*", dict(options))]
        return cls(tuple((p, json.dumps(v, sort_keys=True)) for p, v in items))

    @classmethod
    def from_json(cls, text: str | None) -> StorageOptions:
        """Parse ``--storage-options``; a JSON error never echoes the (secret) text."""
        if not text:
            return cls()
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StorageOptionsError(
                f"--storage-options is not valid JSON ({exc.msg} at character {exc.pos}); pass a JSON object "
                "such as '{\"key\": \"...\", \"secret\": \"...\", \"endpoint_url\": \"http://host:9000\"}'"
            ) from None
        return cls.from_mapping(value)

    def for_protocol(self, proto: str) -> dict[str, Any]:
        """The fsspec keyword arguments for one protocol.

        Flat options (keys, secrets, endpoints) are an object store's: HTTP(S) takes only options
        keyed ``"http"`` (its client refuses an object store's keywords, and a STAC item or catalog
        is often read over HTTPS while its bands are in a bucket).
        """
        proto = PROTOCOL_ALIASES.get(proto, proto)
        out: dict[str, Any] = {}
        for p, text in self._by_protocol:
            if p == proto or (p == "*" and proto != "http"):
                out.update(json.loads(text))
        return out

    def for_url(self, url: str) -> dict[str, Any]:
        """The fsspec keyword arguments for the filesystem of ``url`` (none for local paths)."""
        proto = protocol(url)
        return {} if proto == "file" else self.for_protocol(proto)

    def keys(self) -> list[str]:
        """Names of the options given (safe to show)."""
        return sorted({k for _, text in self._by_protocol for k in json.loads(text)})

    def __bool__(self) -> bool:
        return bool(self._by_protocol)

    def __repr__(self) -> str:
        return f"StorageOptions(keys={self.keys()}, values hidden)"

    __str__ = __repr__


_default = StorageOptions()
_current: ContextVar[StorageOptions | None] = ContextVar("changemap_storage_options", default=None)


def install(options: StorageOptions | Mapping[str, Any] | None) -> StorageOptions:
    """Make ``options`` this process's default storage options (a Ray actor's, a worker's)."""
    global _default
    _default = options if isinstance(options, StorageOptions) else StorageOptions.from_mapping(options)
    return _default


@contextmanager
def using(options: StorageOptions | None) -> Iterator[StorageOptions]:
    """Use ``options`` (None: the process default) for every fsspec/GDAL access in this context.

    A run carries its storage options and enters this around its steps, so two runs in one
    process (an archive's pairs, two flows in one worker) never see each other's credentials.
    """
    token = _current.set(options)
    try:
        yield installed()
    finally:
        _current.reset(token)


def installed() -> StorageOptions:
    """The storage options in force here: the run's (see :func:`using`), else the process default."""
    current = _current.get()
    return current if current is not None else _default


def options_for(url: str) -> dict[str, Any]:
    """Fsspec keyword arguments for ``url`` from the options in force."""
    return installed().for_url(url)


_SECRET_LIKE = re.compile(r"(?i)(secret|token|password|key|credential|sas|signature)")


def secret_values(options: StorageOptions) -> list[str]:
    """Every string value of secret-looking options (for scrubbing text that might echo them)."""
    found: list[str] = []

    def walk(value: Any, name: str) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(v, k)
        elif isinstance(value, str) and _SECRET_LIKE.search(name) and len(value) >= 4:
            found.append(value)

    for _, text in options._by_protocol:
        walk(json.loads(text), "")
    return found


def scrub(text: str, options: StorageOptions | None = None) -> str:
    """``text`` with any secret option value replaced by ``***``."""
    for value in secret_values(options if options is not None else installed()):
        text = text.replace(value, "***")
    return text
