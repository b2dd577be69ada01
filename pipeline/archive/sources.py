"""An archive's pairs from whichever source it names: a manifest, a STAC search, or two globs."""
from __future__ import annotations

from pipeline.archive.pairs import Plan, glob_pairs, read_manifest
from pipeline.config import ArchiveOptions


def plan_pairs(options: ArchiveOptions) -> Plan:
    """The pairs of an archive: from its manifest, its catalog search, or its two globs."""
    if options.manifest:
        return read_manifest(options.manifest, options.output_prefix)
    if options.catalog:
        from pipeline.archive import choose  # pystac, shapely: only for a search

        return choose.as_plan(choose.search_archive(options), options.output_prefix)
    return glob_pairs(options.before, options.after, options.pair_by, options.output_prefix)
