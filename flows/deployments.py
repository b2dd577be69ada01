"""Deployments of changemap's flows from a ``prefect.yaml``, and ``changemap serve``.

The same file serves two ways: ``prefect deploy --prefect-file`` registers it with a
Prefect server and work pool (production), and :func:`serve` runs its deployments in
this process with Prefect's ``serve`` (the embedded default: no work pool, no worker).
"""
from __future__ import annotations

import importlib
import typing
from pathlib import Path
from typing import Any

import yaml
from prefect import Flow
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from pydantic import BaseModel

from pipeline.errors import ChangemapError

DEFAULT_FILE = Path("infra/prefect/prefect.yaml")


class DeploymentFileError(ChangemapError):
    """A deployment file that cannot be served."""


def read_definitions(path: str | Path = DEFAULT_FILE) -> list[dict[str, Any]]:
    """The ``deployments`` entries of a ``prefect.yaml``."""
    path = Path(path)
    if not path.exists():
        raise DeploymentFileError(f"deployment file {path} does not exist; pass --file infra/prefect/prefect.yaml "
                                  "(from the repository root) or your own prefect.yaml")
    doc = yaml.safe_load(path.read_text()) or {}
    entries = doc.get("deployments") or []
    if not entries:
        raise DeploymentFileError(f"{path} defines no deployments (a top-level 'deployments:' list)")
    for entry in entries:
        for key in ("name", "entrypoint"):
            if not entry.get(key):
                raise DeploymentFileError(f"a deployment in {path} has no {key!r}")
    return entries


def flow_for(entrypoint: str) -> Flow:
    """The flow object an entrypoint like ``flows/archive.py:process_archive`` names (imported as a module)."""
    try:
        file_part, name = entrypoint.split(":")
    except ValueError:
        raise DeploymentFileError(f"entrypoint {entrypoint!r} must look like flows/archive.py:process_archive") from None
    module = file_part.removesuffix(".py").replace("/", ".")
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise DeploymentFileError(f"entrypoint {entrypoint!r} does not name a flow of changemap ({exc})") from None
    if not isinstance(obj, Flow):
        raise DeploymentFileError(f"entrypoint {entrypoint!r} is not a Prefect flow")
    return obj


def merge_parameters(flow: Flow, parameters: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Apply ``--param`` overrides to a deployment's parameters.

    An override is ``group.field=value``, or a bare ``field=value`` of the one parameter object
    (``archive_options``, ``settings``, ``run``) that has such a field.
    """
    hints = typing.get_type_hints(flow.fn)
    groups = {name: t for name, t in hints.items() if isinstance(t, type) and issubclass(t, BaseModel)}
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in parameters.items()}
    for key, value in overrides.items():
        group, _, field = key.partition(".")
        if not field:
            owners = [g for g, model in groups.items() if key in model.model_fields]
            if len(owners) != 1:
                out[key] = value
                continue
            group, field = owners[0], key
        out.setdefault(group, {})[field] = value
    return out


def to_deployment(entry: dict[str, Any], overrides: dict[str, Any] | None = None) -> RunnerDeployment:
    """One ``prefect.yaml`` entry as a deployment served by this process (work pool ignored)."""
    schedules = entry.get("schedules") or []
    crons = [s["cron"] for s in schedules if s.get("cron") and s.get("active", True)]
    intervals = [s["interval"] for s in schedules if s.get("interval") and s.get("active", True)]
    return flow_for(entry["entrypoint"]).to_deployment(
        name=entry["name"], cron=crons or None, interval=intervals or None,
        parameters=merge_parameters(flow_for(entry["entrypoint"]), entry.get("parameters") or {}, overrides or {}),
        description=entry.get("description"), tags=entry.get("tags"),
        # by module, so a served run imports the installed package wherever it is started
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


def serve(path: str | Path = DEFAULT_FILE, *, only: list[str] | None = None, limit: int | None = None,
          overrides: dict[str, Any] | None = None) -> None:
    """Serve the file's deployments (all, or those named in ``only``) until interrupted."""
    from prefect import serve as prefect_serve

    entries = [e for e in read_definitions(path) if not only or e["name"] in only]
    if not entries:
        raise DeploymentFileError(f"none of the deployments {only} is defined in {path}")
    prefect_serve(*[to_deployment(e, overrides) for e in entries], limit=limit)
