"""The files of a run folder: config.json, last.pt (resume state), best.pt + best.json (the model to use).

torch and the model zoo are imported by the functions that need them: reading config.json does not.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.io import fs

if TYPE_CHECKING:
    import torch

    from models import WeightsMeta

CONFIG = "config.json"
LAST = "last.pt"
BEST = "best.pt"
BEST_INFO = "best.json"
METRICS = "metrics.csv"
CURVE = "curve.png"


def _atomic_write_text(path: Path, text: str) -> None:
    fs.write_text(str(path), text)


def write_config(run_dir: str | os.PathLike, config: dict, plan: dict) -> None:
    """Save the options and the plan (data, splits, normalisation) the run was started with."""
    _atomic_write_text(Path(run_dir) / CONFIG, json.dumps({"config": config, "plan": plan}, indent=2))


def read_config(run_dir: str | os.PathLike) -> tuple[dict, dict]:
    """The saved ``(config, plan)`` of a run folder."""
    d = json.loads((Path(run_dir) / CONFIG).read_text())
    return d["config"], d["plan"]


def save_last(run_dir: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write the resume state atomically (a kill while writing leaves the previous one)."""
    import torch

    fs.publish(str(Path(run_dir) / LAST), lambda tmp: torch.save(state, tmp))


def load_last(run_dir: str | os.PathLike, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The resume state saved by :func:`save_last` (tensors, numbers, strings only)."""
    import torch

    return torch.load(Path(run_dir) / LAST, map_location=device, weights_only=True)


def save_best(run_dir: str | os.PathLike, model: torch.nn.Module, meta: WeightsMeta, info: dict) -> None:
    """best.pt (a changemap checkpoint: ``changemap run --weights best.pt``) and best.json (its scores)."""
    from models.weights import save_checkpoint

    save_checkpoint(Path(run_dir) / BEST, model, meta)
    _atomic_write_text(Path(run_dir) / BEST_INFO, json.dumps(info, indent=2))
