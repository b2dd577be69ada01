"""The one progress reporter.

A tqdm bar on a terminal, plain lines otherwise, and a Prefect progress artifact when called
inside a flow run.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``progress(done, total)`` for one stage (``ingest``, ``infer``, ``export``, ``vectorize``).

    On a terminal it draws a tqdm bar; elsewhere (logs, CI) it prints ``stage: done/total unit (pct%)``
    every 5 % or 10 s. Inside a Prefect flow run it also keeps a progress artifact up to date.
    """

    def __init__(self, stage: str, unit: str = "tiles", stream: TextIO | None = None,
                 artifact: bool = True) -> None:
        self.stage, self.unit = stage, unit
        self.stream = stream or sys.stderr
        self._bar = None
        self._last_pct, self._last_t = -100.0, 0.0
        self._artifact = _artifact(stage) if artifact else None

    def __call__(self, done: int, total: int) -> None:
        """Report ``done`` of ``total``."""
        pct = 100.0 * done / max(total, 1)
        if self.stream.isatty():
            self._draw(done, total)
        else:
            now = time.monotonic()
            if done >= total or pct - self._last_pct >= 5 or now - self._last_t >= 10:
                self.stream.write(f"{self.stage}: {done}/{total} {self.unit} ({pct:.0f}%)\n")
                self.stream.flush()
                self._last_pct, self._last_t = pct, now
        if self._artifact is not None:
            self._artifact(pct)

    def note(self, text: str) -> None:
        """A line about this stage (e.g. ``statistics: pass 3/17``, ``12 tiles reused``)."""
        if self._bar is not None:
            self._bar.write(f"{self.stage}: {text}", file=self.stream)
        else:
            self.stream.write(f"{self.stage}: {text}\n")
            self.stream.flush()

    def _draw(self, done: int, total: int) -> None:
        from tqdm import tqdm

        if self._bar is None:
            self._bar = tqdm(total=total, desc=self.stage, unit=self.unit.rstrip("s") or "it", file=self.stream,
                             leave=False, dynamic_ncols=True)
        self._bar.total = total
        self._bar.update(done - self._bar.n)
        if done >= total:
            self._bar.close()
            self._bar = None
            self.stream.write(f"{self.stage}: {done}/{total} {self.unit}\n")


def _artifact(stage: str):
    """An updater of a Prefect progress artifact for ``stage``, or None outside a flow run."""
    try:
        from prefect.artifacts import create_progress_artifact, update_progress_artifact
        from prefect.context import FlowRunContext
    except ImportError:  # pragma: no cover - prefect is a dependency
        return None
    if FlowRunContext.get() is None:
        return None
    artifact_id = None
    last = [-1.0]

    def update(pct: float) -> None:
        nonlocal artifact_id
        if pct - last[0] < 5 and pct < 100:
            return  # a request per 5 % is plenty
        last[0] = pct
        try:
            if artifact_id is None:
                artifact_id = create_progress_artifact(pct, key=f"{stage}-progress",
                                                       description=f"changemap {stage}")
            else:
                update_progress_artifact(artifact_id, pct)
        except Exception:  # noqa: BLE001 - progress reporting must never fail a run
            pass

    return update
