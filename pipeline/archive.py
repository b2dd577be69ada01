"""Scene archives: which pairs to process (manifest or globs), what is already done, the summary.

Plain functions; the Prefect flow :func:`flows.archive.process_archive` orders them. Each pair's
outputs live under the archive's prefix, named by the pair id (:func:`pair_outputs`); the
summary carries each pair's change statistics and their totals, and with ``--stac`` a STAC
Collection gathers the pairs' Items.
"""
from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline import manifest, storage
from pipeline.config import ArchiveOptions, MapSpec
from pipeline.errors import ChangemapError
from pipeline.io import fs, raster
from pipeline.products import stac

SUMMARY_NAME = "archive-summary"
_ID_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# A map field an older map was written without had the option's default then.
_DEFAULTS = {name: f.default for name, f in MapSpec.model_fields.items() if not f.is_required()}


class ManifestError(ChangemapError):
    """A manifest or glob pairing that cannot be used."""


@dataclass(frozen=True)
class Pair:
    """One bitemporal pair of an archive and where its change map goes."""

    id: str
    before: str
    after: str
    output: str


@dataclass(frozen=True)
class Plan:
    """The pairs of an archive, and the files the glob form could not pair."""

    pairs: tuple[Pair, ...]
    unpaired: tuple[tuple[str, str], ...] = ()  # (file URL, why it has no partner)


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
    status: str  # succeeded | failed | skipped | unpaired
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


def default_output(prefix: str, pair_id: str) -> str:
    """``PREFIX/{id}.tif``."""
    return storage.join(prefix, f"{pair_id}.tif")


def pair_outputs(pair: Pair, options: ArchiveOptions) -> dict[str, str | None]:
    """The :class:`~pipeline.config.RunOptions` output fields of one pair's run (``None``: not written).

    Besides the map (``pair.output``), under the archive's prefix: statistics
    ``PREFIX/{id}.stats.json`` (always), polygons ``PREFIX/{id}.{vector_format}``, quicklook
    ``PREFIX/{id}.png`` and the STAC Item ``PREFIX/{id}/{id}.json`` (where the archive's
    Collection keeps it, :func:`write_collection`). Every field is set, so an output path given
    in the archive's run options is never shared by all pairs.
    """
    prefix, pid = options.output_prefix, pair.id
    return {
        "output": pair.output,
        "stats": storage.join(prefix, f"{pid}.stats.json"),
        "vector": storage.join(prefix, f"{pid}.{options.vector_format}") if options.vector_format else None,
        "quicklook": storage.join(prefix, f"{pid}.png") if options.quicklooks else None,
        "stac": storage.join(prefix, pid, f"{pid}.json") if options.stac else None,
    }


def _check_ids(pairs: Sequence[Pair], where: str) -> None:
    seen: set[str] = set()
    for p in pairs:
        if not _ID_OK.match(p.id):
            raise ManifestError(f"{where}: pair id {p.id!r} must be letters, digits, '.', '_' or '-' "
                                "(it names the output file); fix the id")
        if p.id in seen:
            raise ManifestError(f"{where}: pair id {p.id!r} appears twice; ids must be unique")
        seen.add(p.id)
    outputs = [p.output for p in pairs]
    if len(set(outputs)) != len(outputs):
        raise ManifestError(f"{where}: two pairs write the same output; give each its own 'output'")


def parse_manifest(text: str, source: str, output_prefix: str) -> Plan:
    """Pairs from a CSV (header ``id,before,after[,output]``) or JSON-lines manifest text."""
    records = manifest.parse_rows(text, source, ManifestError)
    if records and not text.lstrip().startswith("{"):
        missing = {"id", "before", "after"} - set(records[0])
        if missing:
            raise ManifestError(
                f"manifest {source} lacks the column(s) {sorted(missing)}; its header must be id,before,after "
                f"(optionally output), got {sorted(records[0])}"
            )
    pairs = []
    for n, rec in enumerate(records, start=1):
        for key in ("id", "before", "after"):
            if not str(rec.get(key) or "").strip():
                raise ManifestError(f"manifest {source} entry {n} has no {key!r}; every pair needs id, before, after")
        pid = str(rec["id"]).strip()
        out = str(rec.get("output") or "").strip()
        pairs.append(Pair(pid, manifest.resolve(str(rec["before"]).strip(), source),
                          manifest.resolve(str(rec["after"]).strip(), source),
                          manifest.resolve(out, source) if out else default_output(output_prefix, pid)))
    if not pairs:
        raise ManifestError(f"manifest {source} lists no pairs")
    _check_ids(pairs, f"manifest {source}")
    return Plan(tuple(pairs))


def read_manifest(url: str, output_prefix: str) -> Plan:
    """Read a manifest at a path or URL."""
    if not fs.exists(url):
        raise ManifestError(f"manifest {storage.redact_url(url)} does not exist; check the path or URL")
    return parse_manifest(fs.read_text(url), url, output_prefix)


def pairing_key(rule: str):
    """The function that turns a file URL into its pairing key: ``stem`` or a regex with a named group."""
    if rule == "stem":
        return lambda url: storage.basename(url).rsplit(".", 1)[0]
    try:
        pattern = re.compile(rule)
    except re.error as exc:
        raise ManifestError(f"--pair-by {rule!r} is neither 'stem' nor a valid regex ({exc})") from None
    if not pattern.groupindex and pattern.groups != 1:
        raise ManifestError(f"--pair-by regex {rule!r} needs a named group, e.g. '(?P<key>tile_\\d+)'")

    def key(url: str) -> str | None:
        m = pattern.search(storage.basename(url))
        if not m:
            return None
        return m.group(next(iter(pattern.groupindex))) if pattern.groupindex else m.group(1)

    return key


def pair_files(before: Iterable[str], after: Iterable[str], rule: str, output_prefix: str) -> Plan:
    """Pair two file lists by ``rule``; files without a partner are reported, not dropped silently."""
    key = pairing_key(rule)
    b_map: dict[str, str] = {}
    a_map: dict[str, str] = {}
    unpaired: list[tuple[str, str]] = []
    for urls, mapping, side in ((before, b_map, "BEFORE"), (after, a_map, "AFTER")):
        for url in urls:
            k = key(url)
            if k is None:
                unpaired.append((url, f"{side} file does not match --pair-by {rule!r}"))
            elif k in mapping:
                raise ManifestError(f"--pair-by {rule!r} gives the same key {k!r} to {mapping[k]} and {url}; "
                                    "use a rule that tells them apart")
            else:
                mapping[k] = url
    unpaired += [(b_map[k], f"BEFORE file has no AFTER file with key {k!r}") for k in sorted(set(b_map) - set(a_map))]
    unpaired += [(a_map[k], f"AFTER file has no BEFORE file with key {k!r}") for k in sorted(set(a_map) - set(b_map))]
    pairs = [Pair(k, b_map[k], a_map[k], default_output(output_prefix, k)) for k in sorted(set(b_map) & set(a_map))]
    if not pairs:
        why = "; ".join(f"{storage.redact_url(u)}: {r}" for u, r in unpaired[:5]) or "no files"
        raise ManifestError(f"no BEFORE/AFTER files pair up by {rule!r}: {why}")
    _check_ids(pairs, "--pair-by")
    return Plan(tuple(pairs), tuple(unpaired))


def glob_pairs(before_pattern: str, after_pattern: str, rule: str, output_prefix: str) -> Plan:
    """The glob form: list both patterns (any fsspec URL) and pair the files."""
    before, after = fs.glob(before_pattern), fs.glob(after_pattern)
    for pattern, found in ((before_pattern, before), (after_pattern, after)):
        if not found:
            raise ManifestError(f"no files match {storage.redact_url(pattern)}; check the pattern (quote it so "
                                "the shell does not expand it)")
    return pair_files(before, after, rule, output_prefix)


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
        info, problems, tags = raster.inspect_cog(pair.output, "existing output")
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


def summary_counts(results: Sequence[PairResult]) -> dict[str, int]:
    """How many pairs ended in each status."""
    counts = {"succeeded": 0, "failed": 0, "skipped": 0, "unpaired": 0}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    return counts


def summary_message(results: Sequence[PairResult]) -> str:
    """One line: how many pairs succeeded, failed, were skipped."""
    c = summary_counts(results)
    pairs = len(results) - c["unpaired"]
    msg = f"{pairs} pairs: {c['succeeded']} succeeded, {c['failed']} failed, {c['skipped']} skipped (complete)"
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
