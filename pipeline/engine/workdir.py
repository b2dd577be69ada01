"""Run folders: where a run keeps its intermediate stores, found again by the map's key.

A run folder is named after :meth:`pipeline.config.MapSpec.key` (a hash of the inputs and
the map settings), under ``--workdir`` or, without it, under the cache
(``$CHANGEMAP_CACHE/work``). Re-running the identical command finds the folder of an
attempt that did not finish; a run with other map settings gets another folder, so stale
work is never reused. The folder is removed after success unless it is to be kept. A run holds
the folder's lock while it works in it (:func:`locked`): a second run of the same map at the
same time is refused, so two runs never share a work folder.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pipeline import storage
from pipeline.config import MapSpec, RunOptions
from pipeline.errors import ChangemapError
from pipeline.io import fs


@dataclass(frozen=True)
class RunPaths:
    """Where one run keeps its intermediate stores."""

    run_dir: str
    input_store: str
    output_store: str
    default_place: bool  # under the cache (no --workdir): removed after success

    @property
    def spec_file(self) -> str:
        """The map spec the folder's work was made for."""
        return storage.join(self.run_dir, "map.json")


def cache_root() -> str:
    """Where run folders go without ``--workdir`` (``CHANGEMAP_CACHE``, default ``~/.cache/changemap``)."""
    return str(Path(os.environ.get("CHANGEMAP_CACHE") or Path.home() / ".cache" / "changemap") / "work")


def paths_for(spec: MapSpec, run: RunOptions) -> RunPaths:
    """The run folder of this map (created if absent), with the spec saved in it."""
    base = run.workdir or cache_root()
    run_dir = storage.join(base, f"changemap-{spec.key()}")
    fs.make_dirs(run_dir)
    paths = RunPaths(run_dir, storage.join(run_dir, "input.zarr"), storage.join(run_dir, "output.zarr"),
                     default_place=run.workdir is None)
    fs.write_text(paths.spec_file, spec.to_json())
    return paths


class WorkFolderBusyError(ChangemapError):
    """Another run is making the same map in the same work folder now."""


LOCK_NAME = "lock"
REMOTE_LOCK_REFRESH_S = 30.0  # a remote folder's lock says its holder is alive this often
REMOTE_LOCK_STALE_S = 120.0  # a remote lock not refreshed for this long was left by a run that died


def _busy(paths: RunPaths, holder: str) -> WorkFolderBusyError:
    return WorkFolderBusyError(
        f"another run is making the same map in {storage.redact_url(paths.run_dir)} now ({holder}); wait for it to "
        "finish (its map will be the same), or stop it; a run that was killed frees the folder by itself")


@contextmanager
def locked(paths: RunPaths) -> Iterator[None]:
    """Hold the run folder's lock while working in it; a second holder is refused at once with a clear line.

    Locally an exclusive ``flock`` on ``run_dir/lock`` (released by the system when its process
    dies, however it dies); in object storage a lock object naming its holder, refreshed every
    :data:`REMOTE_LOCK_REFRESH_S` and taken over once :data:`REMOTE_LOCK_STALE_S` old.
    """
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if not storage.is_remote(paths.run_dir):
        path = Path(storage.local_path(paths.run_dir)) / LOCK_NAME
        with open(path, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                raise _busy(paths, f.read().strip() or "a process of this machine") from None
            f.seek(0)
            f.truncate()
            f.write(json.dumps(me))
            f.flush()
            yield
        return
    url = storage.join(paths.run_dir, LOCK_NAME)
    try:
        held = json.loads(fs.read_text(url))
    except (OSError, ValueError):
        held = None
    if held and time.time() - float(held.get("refreshed", 0)) < REMOTE_LOCK_STALE_S:
        raise _busy(paths, f"host {held.get('host')}, process {held.get('pid')}, since {held.get('since')}")
    stop = threading.Event()

    def refresh() -> None:
        while not stop.wait(REMOTE_LOCK_REFRESH_S):
            fs.write_text(url, json.dumps({**me, "refreshed": time.time()}))

    refresh_thread = threading.Thread(target=refresh, name="work-folder-lock", daemon=True)
    fs.write_text(url, json.dumps({**me, "refreshed": time.time()}))
    refresh_thread.start()
    try:
        yield
    finally:
        stop.set()
        refresh_thread.join()
        fs.remove_tree(url)


def cleanup(paths: RunPaths, run: RunOptions, succeeded: bool) -> str | None:
    """Remove the run folder after success; return it if kept.

    It is kept after a failure (a rerun finds it) and with ``keep_workdir``.
    """
    if run.keep_workdir or not succeeded:
        return paths.run_dir
    fs.remove_tree(paths.run_dir)
    return None


class Records:
    """Completion records of one run folder: an empty marker per finished unit of work.

    A record is written only after the data it stands for (a chunk of ``input.zarr``, a tile of
    ``output.zarr``), so a rerun trusts exactly what was finished and redoes a torn write.
    Stages: ``ingest`` (the aligned chunk is in ``input.zarr``), ``infer`` (the tile's
    probabilities are in ``output.zarr``).
    """

    STAGES = ("ingest", "infer")

    def __init__(self, run_dir: str) -> None:
        self.root = storage.join(run_dir, "records")

    def done(self, stage: str) -> set[str]:
        """The keys of the finished units of ``stage``."""
        return {storage.basename(p) for p in fs.listdir(storage.join(self.root, stage))}

    def mark(self, stage: str, key: str, note: str = "") -> None:
        """Record that ``key`` of ``stage`` is finished (call after its data is written); ``note`` says by whom."""
        fs.write_small(storage.join(self.root, stage, key), note)

    def note(self, stage: str, key: str) -> str:
        """What a record says (the Ray node that did the work)."""
        return fs.read_text(storage.join(self.root, stage, key))
