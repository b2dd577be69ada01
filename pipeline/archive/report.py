"""What an archive run reports: a row per pair, totals, the summary files and the STAC Collection of the maps."""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline import storage
from pipeline.io import fs
from pipeline.products import stac

SUMMARY_NAME = "archive-summary"


# Summary column <- key of the change statistics (pipeline.products.mapstats), and its rounding.
CHANGE_COLUMNS = {"valid_area_km2": ("valid_area_km2", 6), "changed_area_km2": ("changed_area_km2", 6),
                  "changed_percent": ("changed_percent_of_valid", 4), "regions": ("regions", None),
                  "nodata_fraction": ("nodata_fraction", 6)}


@dataclass
class PairResult:
    """One row of the archive summary.

    ``change`` is the pair's change statistics (the run's, or a skipped pair's statistics JSON
    read back); empty when there are none.
    """

    id: str
    status: str  # succeeded | failed | skipped | updated (products remade from the kept map) | unpaired
    seconds: float = 0.0
    megapixels: float = 0.0
    output: str = ""
    error: str = ""
    tiles: int = 0
    change: dict[str, Any] = field(default_factory=dict, repr=False)
    tiles_predicted: int = field(default=0, repr=False)  # by the model in this run (not reused from a resume)

    def row(self) -> dict[str, Any]:
        """The summary row (secrets scrubbed, URLs without credentials); change columns blank without statistics."""
        d = asdict(self)
        d.pop("change")
        d.pop("tiles_predicted")
        d["seconds"] = round(self.seconds, 3)
        d["megapixels"] = round(self.megapixels, 4)
        d["output"] = storage.redact_url(self.output)
        d["error"] = storage.scrub(self.error)
        for column, (key, digits) in CHANGE_COLUMNS.items():
            value = self.change.get(key)
            d[column] = round(value, digits) if value is not None and digits is not None else value
        return d


def summary_counts(results: Sequence[PairResult]) -> dict[str, int]:
    """How many pairs ended in each status."""
    counts = {"succeeded": 0, "failed": 0, "skipped": 0, "updated": 0, "unpaired": 0}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    return counts


def summary_message(results: Sequence[PairResult]) -> str:
    """One line: how many pairs succeeded, failed, were skipped."""
    c = summary_counts(results)
    pairs = len(results) - c["unpaired"]
    msg = f"{pairs} pairs: {c['succeeded']} succeeded, {c['failed']} failed, {c['skipped']} skipped (complete)"
    if c["updated"]:
        msg += f", {c['updated']} updated (products made again from the map)"
    if c["unpaired"]:
        msg += f"; {c['unpaired']} unpaired file(s)"
    return msg


SUMMARY_COLUMNS = ("id", "status", "seconds", "megapixels", "tiles", *CHANGE_COLUMNS, "output", "error")


def summary_totals(results: Sequence[PairResult]) -> dict[str, Any]:
    """Totals over the pairs with statistics (succeeded, and skipped ones whose statistics JSON was read).

    ``changed_percent`` is the changed share of the summed valid area; ``regions`` is ``None``
    unless every pair with statistics counted its regions (polygons were written).
    """
    have = [r.change for r in results if r.change.get("valid_area_km2") is not None]
    valid = sum(c["valid_area_km2"] for c in have)
    changed = sum(c.get("changed_area_km2") or 0.0 for c in have)
    regions = [c.get("regions") for c in have]
    return {"pairs_with_statistics": len(have), "valid_area_km2": round(valid, 6), "changed_area_km2": round(changed, 6),
            "changed_percent": round(100 * changed / valid, 4) if valid else None,
            "regions": sum(regions) if have and None not in regions else None}


def totals_message(totals: dict[str, Any]) -> str:
    """One line of the totals, e.g. ``changed 0.0123 km² of 1.2 km² valid (1.02 %), 87 regions, over 9 pairs``."""
    if not totals["pairs_with_statistics"]:
        return "no change statistics"
    regions = f", {totals['regions']} regions" if totals["regions"] is not None else ""
    percent = f"{totals['changed_percent']:.2f} %" if totals["changed_percent"] is not None else "no valid area"
    return (f"changed {totals['changed_area_km2']:.6f} km² of {totals['valid_area_km2']:.6f} km² valid ({percent})"
            f"{regions}, over {totals['pairs_with_statistics']} pairs")


def write_summary(results: Sequence[PairResult], output_prefix: str, extra: dict[str, Any] | None = None
                  ) -> tuple[str, str]:
    """Write ``archive-summary.csv`` and ``.json`` under the output prefix (atomically); return their URLs."""
    rows = [r.row() for r in results]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    csv_url = storage.join(output_prefix, f"{SUMMARY_NAME}.csv")
    json_url = storage.join(output_prefix, f"{SUMMARY_NAME}.json")
    fs.write_text(csv_url, buf.getvalue())
    doc = {"message": summary_message(results), "counts": summary_counts(results),
           "totals": summary_totals(results), **(extra or {}), "pairs": rows}
    fs.write_text(json_url, json.dumps(doc, indent=2))
    return csv_url, json_url


def write_collection(items: Sequence[tuple[str, str]], output_prefix: str) -> str | None:
    """The archive's STAC Collection of its pairs' Items at ``PREFIX/collection.json``; returns its URL.

    Args:
        items: ``(pair id, Item URL)`` of every pair with a map (succeeded or skipped); an Item
            that cannot be read is left out. Each Item gets its pair's id and is rewritten in
            place, ``PREFIX/{id}/{id}.json``, with links relative to the Collection.
        output_prefix: the archive's prefix.

    Returns:
        The Collection's URL, or ``None`` when no Item could be read (nothing is written).
    """
    found = []
    for pair_id, url in items:
        try:
            item = stac.read_item(url)
        except (OSError, ValueError, KeyError):
            continue
        item.id = pair_id
        found.append(item)
    if not found:
        return None
    return stac.archive_collection(found, output_prefix).get_self_href()

