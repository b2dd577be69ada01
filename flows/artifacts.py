"""Prefect artifacts of a run: its change statistics as a table and its quicklook as an image."""
from __future__ import annotations

from typing import Any

from prefect.artifacts import create_image_artifact, create_table_artifact

from pipeline import storage
from pipeline.checks import RunPlan


def publish(made: dict[str, Any], pre: RunPlan) -> None:
    """Attach the statistics (and the quicklook, when written) to the current flow run."""
    change = made["change"]
    rows = [{"measure": k, "value": v} for k, v in change.items() if not isinstance(v, dict)]
    rows += [{"measure": f"regions {k}", "value": v} for k, v in (change.get("size_classes_m2") or {}).items()]
    create_table_artifact(key="change-statistics", table=rows,
                          description=f"Change statistics of {storage.redact_url(made['outputs']['data'])}")
    quicklook = made["outputs"].get("thumbnail")
    if quicklook:
        url = quicklook if storage.is_remote(quicklook) else "file://" + storage.absolute(quicklook)
        create_image_artifact(image_url=storage.redact_url(url), key="quicklook",
                              description=f"BEFORE | AFTER | changes of {storage.redact_url(pre.spec.before)}")
