"""Scene archives: which pairs to process (manifest or globs), what is already done, the summary.

Plain functions; the Prefect flow :func:`flows.archive.process_archive` orders them.
"""
from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline import storage
from pipeline.config import MapSpec
from pipeline.errors import ChangemapError
from pipeline.io import fs, raster

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


@dataclass
class PairResult:
    """One row of the archive summary."""

    id: str
    status: str  # succeeded | failed | skipped | unpaired
    seconds: float = 0.0
    megapixels: float = 0.0
    output: str = ""
    error: str = ""
    tiles: int = 0
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def row(self) -> dict[str, Any]:
        """The summary row (secrets scrubbed, URLs without credentials)."""
        d = asdict(self)
        d.pop("extra")
        d["seconds"] = round(self.seconds, 3)
        d["megapixels"] = round(self.megapixels, 4)
        d["output"] = storage.redact_url(self.output)
        d["error"] = storage.scrub(self.error)
        return d


def default_output(prefix: str, pair_id: str) -> str:
    """``PREFIX/{id}.tif``."""
    return storage.join(prefix, f"{pair_id}.tif")


def _resolve(path: str, base: str) -> str:
    """Manifest entries may be relative to the manifest's own folder."""
    if "://" in path or path.startswith("/"):
        return path
    return storage.join(base, path)


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
    base = storage.parent(source)
    stripped = text.lstrip()
    if not stripped:
        raise ManifestError(f"manifest {source} is empty; it needs a header id,before,after and one row per pair")
    records: list[dict[str, Any]] = []
    if stripped.startswith("{"):
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ManifestError(f"manifest {source} line {n} is not JSON ({exc.msg}); "
                                    "JSON-lines manifests hold one object per line") from None
            if not isinstance(rec, dict):
                raise ManifestError(f"manifest {source} line {n} is not a JSON object")
            records.append(rec)
    else:
        reader = csv.DictReader(io.StringIO(text))
        missing = {"id", "before", "after"} - set(reader.fieldnames or [])
        if missing:
            raise ManifestError(
                f"manifest {source} lacks the column(s) {sorted(missing)}; its header must be id,before,after "
                f"(optionally output), got {reader.fieldnames}"
            )
        records = [dict(r) for r in reader]
    pairs = []
    for n, rec in enumerate(records, start=1):
        for key in ("id", "before", "after"):
            if not str(rec.get(key) or "").strip():
                raise ManifestError(f"manifest {source} entry {n} has no {key!r}; every pair needs id, before, after")
        pid = str(rec["id"]).strip()
        out = str(rec.get("output") or "").strip()
        pairs.append(Pair(pid, _resolve(str(rec["before"]).strip(), base), _resolve(str(rec["after"]).strip(), base),
                          _resolve(out, base) if out else default_output(output_prefix, pid)))
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


def existing_output(pair: Pair, spec: MapSpec) -> tuple[str, str, float]:
    """Whether ``pair.output`` is already a complete map of this pair as ``spec`` states it.

    Returns ``(state, reason, megapixels)``: ``missing``; ``complete`` (readable to its
    last block, a valid COG, written by changemap for these inputs and settings); or
    ``foreign`` with the reason it cannot be skipped (replacing it needs ``--overwrite``).
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
    return "complete", "", mp


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


SUMMARY_COLUMNS = ("id", "status", "seconds", "megapixels", "tiles", "output", "error")


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
    doc = {"message": summary_message(results), "counts": summary_counts(results), **(extra or {}), "pairs": rows}
    fs.write_text(json_url, json.dumps(doc, indent=2))
    return csv_url, json_url
