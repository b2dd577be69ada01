"""Which pairs an archive holds: a manifest (CSV or JSON lines), a STAC search, or two globs paired by a rule.

Each pair's outputs live under the archive's prefix, named by the pair id (:func:`pair_outputs`).
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline import manifest, storage
from pipeline.config import ArchiveOptions
from pipeline.errors import ChangemapError
from pipeline.io import fs

_ID_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


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
    unpaired: tuple[tuple[str, str], ...] = ()  # (file URL or search tile, why it has no partner)
    found: Any = None  # a catalog search's choice (pipeline.archive.choose.SearchPlan): dates, cloud cover



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

