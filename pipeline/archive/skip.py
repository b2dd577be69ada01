"""What an archive already holds: whether a pair's outputs are complete and made as asked (the skip check)."""
from __future__ import annotations

import json
from typing import Any

from pipeline import storage
from pipeline.archive.pairs import Pair
from pipeline.config import MapSpec, ProductSettings
from pipeline.errors import ChangemapError
from pipeline.io import cog, fs

# A map field an older map was written without had the option's default then.
_DEFAULTS = {name: f.default for name, f in MapSpec.model_fields.items() if not f.is_required()}


def existing_output(pair: Pair, spec: MapSpec, extras: dict[str, str | None] | None = None,
                    products: ProductSettings = ProductSettings()) -> tuple[str, str, float]:
    """Whether ``pair.output`` is already a complete map of this pair as ``spec`` states it, with its products.

    Returns ``(state, reason, megapixels)``: ``missing``; ``complete`` (readable to its
    last block, a valid COG, written by changemap for these inputs and settings, and every
    requested extra output in ``extras`` — :func:`~pipeline.archive.pairs.pair_outputs` —
    present and made from this map with these ``products`` settings, as the statistics' stamp
    says); ``products`` (such a map, but a product is missing or was made otherwise: the
    products are made again from the map, the map is kept); or ``foreign`` with the reason it
    cannot be skipped (replacing it needs ``--overwrite``).
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
        return "products", f"it lacks its {', '.join(_OUTPUT_NAMES.get(k, k) for k in missing)}", mp
    stale = _stale_products((extras or {}).get("stats"), spec, products)
    if stale:
        return "products", stale, mp
    return "complete", "", mp


def _stale_products(stats_url: str | None, spec: MapSpec, products: ProductSettings) -> str:
    """Why the products beside a map are not those ``products`` asks for ('' when they are)."""
    if not stats_url:
        return ""
    made = read_statistics(stats_url).get("made_with")
    if not isinstance(made, dict) or not isinstance(made.get("map"), dict):
        return "its products carry no stamp of what made them"
    if _differences(made["map"], spec):
        return "its products were made from another map"
    had = made.get("products") or {}
    differ = sorted(k for k, v in products.to_dict().items() if had.get(k) != v)
    return f"its products were made with other settings ({', '.join(differ)} differ)" if differ else ""


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

