"""What an archive already holds: whether a pair's outputs are complete and made as asked (the skip check)."""
from __future__ import annotations

import json
from typing import Any

from pipeline import storage
from pipeline.archive.pairs import Pair
from pipeline.config import MapSpec
from pipeline.errors import ChangemapError
from pipeline.io import cog, fs

# A map field an older map was written without had the option's default then.
_DEFAULTS = {name: f.default for name, f in MapSpec.model_fields.items() if not f.is_required()}


def existing_output(pair: Pair, spec: MapSpec, extras: dict[str, str | None] | None = None
                    ) -> tuple[str, str, float]:
    """Whether ``pair.output`` is already a complete map of this pair as ``spec`` states it.

    Returns ``(state, reason, megapixels)``: ``missing``; ``complete`` (readable to its
    last block, a valid COG, written by changemap for these inputs and settings, and every
    requested extra output present); ``incomplete`` (such a map, but an extra output in
    ``extras`` — :func:`pair_outputs` — is missing: the pair is run again); or ``foreign``
    with the reason it cannot be skipped (replacing it needs ``--overwrite``).
    """
    if not fs.exists(pair.output):
        return "missing", "", 0.0
    try:
        info, problems, tags = cog.inspect_cog(pair.output, "existing output")
    except ChangemapError as exc:
        return "foreign", f"it cannot be read as a change map ({exc})", 0.0
    mp = info.grid.megapixels
    if problems:
        return "foreign", f"it is not a valid COG ({'; '.join(problems)})", mp
    try:
        made = json.loads(tags["CHANGEMAP_CONFIG"])
    except (KeyError, json.JSONDecodeError):
        return "foreign", "it was not written by changemap (no CHANGEMAP_CONFIG tag)", mp
    differ = _differences(made, spec)
    if differ:
        return "foreign", f"it was made with other settings ({', '.join(differ)} differ)", mp
    missing = [kind for kind, url in (extras or {}).items() if kind != "output" and url and not fs.exists(url)]
    if missing:
        return "incomplete", f"it lacks its {', '.join(_OUTPUT_NAMES.get(k, k) for k in missing)}", mp
    return "complete", "", mp


_OUTPUT_NAMES = {"stats": "statistics", "vector": "polygons", "quicklook": "quicklook", "stac": "STAC item"}


def read_statistics(url: str | None) -> dict[str, Any]:
    """A pair's statistics JSON read back (a skipped pair's); empty when absent or unreadable."""
    if not url:
        return {}
    try:
        doc = json.loads(fs.read_text(url))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _differences(made: dict[str, Any], spec: MapSpec) -> list[str]:
    """The map fields in which a map's stamp differs from ``spec`` (the whole map spec is compared)."""
    want = spec.stamp()
    differ = []
    for name in MapSpec.model_fields:
        had = made.get(name, _DEFAULTS.get(name))
        if name in ("before", "after") and isinstance(had, str):
            had = storage.absolute(had)
        if name == "bands" and had is not None:
            had = list(had)
        if had != want[name]:
            differ.append(name)
    return differ

