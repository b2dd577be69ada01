"""The one manifest reader: CSV with a header, or JSON lines, at a path or URL; entries relative to it.

Archives (pairs to map) and datasets (pairs with labels) both list their rows this way.
"""
from __future__ import annotations

import csv
import io
import json

from pipeline import storage
from pipeline.errors import ChangemapError


def parse_rows(text: str, source: str, error: type[ChangemapError] = ChangemapError) -> list[dict[str, str]]:
    """Rows of a manifest's text: JSON lines when it starts with ``{``, else CSV with a header.

    Keys are lower-cased and values stripped; an unreadable line is an ``error`` naming it.
    """
    stripped = text.lstrip()
    if not stripped:
        raise error(f"manifest {source} is empty; it needs a header line and one row per pair")
    rows: list[dict] = []
    if stripped.startswith("{"):
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise error(f"manifest {source} line {n} is not JSON ({exc.msg}); JSON-lines manifests hold one "
                            "object per line") from None
            if not isinstance(rec, dict):
                raise error(f"manifest {source} line {n} is not a JSON object")
            rows.append(rec)
    else:
        rows = list(csv.DictReader(io.StringIO(text)))
    return [{str(k).strip().lower(): str(v).strip() for k, v in r.items() if k is not None and v is not None}
            for r in rows]


def resolve(path: str, manifest: str) -> str:
    """An entry of the manifest at ``manifest``, as a path or URL.

    Absolute paths and URLs stay as they are; others are relative to the manifest's own folder
    (or prefix), made absolute (Ray workers may run in another working directory).
    """
    if "://" in path or path.startswith("/"):
        return path
    return storage.join(storage.parent(storage.absolute(manifest)), path)
