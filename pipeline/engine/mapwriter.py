"""The map writer: finished tiles into ``output.zarr`` (what a rerun reuses) and the COG's blocks, then the COG.

The writer is the one process that receives every tile's probabilities: it keeps them in
``output.zarr`` with their completion records (a rerun reuses them), turns them into the map's
blocks as they arrive (feeding the statistics and polygons on the way), and at the end builds
the overviews and publishes the Cloud-Optimized GeoTIFF atomically.
"""
from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from pipeline import storage
from pipeline.config import MapSettings
from pipeline.engine import heap
from pipeline.grid import Grid
from pipeline.io import store
from pipeline.io.cog import write_cog

if TYPE_CHECKING:
    from pipeline.checks import RunPlan


def probability_to_uint8(p: np.ndarray) -> np.ndarray:
    """Scale probabilities in [0, 1] to 0..255 (NaN -> 0; nodata is carried by the mask).

    ``round(clip(p, 0, 1) * 255)`` computed in one float32 buffer, in place (the same values as
    the chain of copies it replaces: the map writer runs it on every pixel of the scene).
    """
    q = np.multiply(p, np.float32(255), dtype=np.float32)
    np.clip(q, 0, 255, out=q)
    np.rint(q, out=q)
    q[np.isnan(q)] = 0
    return q.astype(np.uint8)


Window = tuple[int, int, int, int]  # (y0, x0, h, w)


class BlockSink(Protocol):
    """Something fed every block of the map as it is written (statistics, polygons)."""

    def add(self, window: Window, probability: np.ndarray, valid: np.ndarray, changed: np.ndarray | None = None) -> None:
        """Take one block: ``(y0, x0, h, w)``, probabilities (NaN: none) and where both dates have data.

        ``changed`` is the map's own change decision where it has one (else probability > threshold).
        """


@dataclass(frozen=True)
class MapFormat:
    """How probabilities become the map's bands: the map settings' output options, and the threshold."""

    settings: MapSettings = MapSettings()
    threshold: float | None = 0.5  # None: Otsu's over the scene, known once every tile is (the writer's two passes)
    compress: str = "deflate"  # the file's codec (a run option: it changes the bytes, not the map)

    @classmethod
    def of(cls, plan: RunPlan, compress: str = "deflate") -> MapFormat:
        """The format a run's map spec asks for, written with ``compress``."""
        return cls(plan.spec, plan.threshold, compress)

    @property
    def probability(self) -> str:
        """Band 1's type: ``uint8`` (probability x 255) or ``float32``."""
        return self.settings.probability

    @property
    def mask(self) -> bool:
        """Whether band 2 holds the binary change mask."""
        return self.settings.mask

    @property
    def descriptions(self) -> tuple[str, ...]:
        """The band descriptions."""
        return ("change_probability",) + (("change_mask",) if self.mask else ())

    def tags(self, extra: dict[str, str] | None) -> dict[str, str]:
        """The map's dataset tags: threshold and scale, plus ``extra``."""
        scale = "255" if self.probability == "uint8" else "1"
        return {"CHANGEMAP_THRESHOLD": str(self.threshold), "CHANGEMAP_PROBABILITY_SCALE": scale, **(extra or {})}

    def encode(self, window: Window, p: np.ndarray, valid: np.ndarray, sinks: Sequence[BlockSink] = ()
               ) -> tuple[Window, np.ndarray, np.ndarray]:
        """One block of probabilities (NaN: none) -> ``(window, bands, valid)`` as written; feeds ``sinks``."""
        for sink in sinks:  # statistics and polygons from the same pass that writes the map
            sink.add(window, p, valid)
        ok = valid & ~np.isnan(p)
        bands = np.empty((len(self.descriptions), *p.shape), self.probability)  # written in place: no stack
        if self.probability == "uint8":
            bands[0] = probability_to_uint8(p)
        else:
            bands[0] = np.where(ok, p, np.nan)
        if self.mask:
            np.logical_and(np.greater(p, self.threshold), ok, out=bands[1], casting="unsafe")  # NaN > t is False
        return window, bands, ok


def publish_cog(dest: str, grid: Grid, fmt: MapFormat, blocks: Iterable[tuple[Window, np.ndarray, np.ndarray]],
                tags: dict[str, str] | None = None) -> None:
    """Write encoded blocks as a COG at ``dest`` (path or URL), atomically.

    Object stores get the finished file in one upload (visible only once complete); local
    paths a rename.
    """
    nodata = float("nan") if fmt.probability == "float32" else None
    write_cog(dest, grid, len(fmt.descriptions), fmt.probability, blocks, nodata=nodata, tags=fmt.tags(tags),
              descriptions=fmt.descriptions, compress=fmt.compress)


class MapAborted(RuntimeError):
    """The map writer was stopped before the map was complete."""


_ABORT = object()


HISTOGRAM_BINS = 1024  # of the scores, for a threshold the scene decides (Otsu's): 1/1024 wide in 0..1


class MapWriter:
    """Writes a change map as its tiles finish (blocks in any order), then the COG at the end.

    Fed ``put([(tile, probabilities, valid), ...])`` by the stream; ``keep`` stores and records the
    tiles first (``output.zarr``, what a rerun reuses), then a thread turns them into blocks of a
    tiled GeoTIFF while more tiles are predicted, feeding the statistics (and the polygons) on
    the way. :meth:`close` builds the overviews and publishes the COG atomically, and returns the
    statistics sinks. Ray runs it as an actor.

    With no threshold yet (``fmt.threshold`` None: Otsu's over the scene's scores), the tiles are
    only kept and counted into a histogram of their scores (:meth:`histogram`); the caller
    computes the threshold from it and :meth:`close` writes the map from the stores of ``scene``
    (``input_store``, ``output_store``) in a second pass, feeding the sinks then.
    """

    def __init__(self, dest: str, grid: Grid, fmt: MapFormat, tags: dict[str, str], sinks: Sequence[BlockSink],
                 storage_options: storage.StorageOptions | None = None, queue_size: int = 32,
                 keep: Callable[[Sequence[tuple]], None] | None = None, scene: Any = None) -> None:
        self.dest, self.grid, self.fmt, self.tags, self.sinks = dest, grid, fmt, tags, list(sinks)
        self.storage_options, self.keep, self.scene = storage_options, keep, scene
        self.blocks = 0
        self.deferred = fmt.threshold is None
        self.counts = np.zeros(HISTOGRAM_BINS, np.int64)
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._write, name="map-writer", daemon=True)
        if not self.deferred:
            self._thread.start()

    def put(self, results: Sequence[tuple], kept: bool = False) -> int:
        """Take finished tiles ``(tile, probabilities, valid)``; blocks while the block queue is full.

        Unless they are ``kept`` already (read back from ``output.zarr``), ``keep`` stores and
        records them first, in this call: the stream learns that a tile is safe when its put returns.
        """
        if self.keep is not None and not kept and self._error is None:
            with storage.using(self.storage_options):
                self.keep(results)
        if self.deferred:
            for _, prob, valid in results:
                ok = valid & np.isfinite(prob)
                bins = np.clip((prob[ok] * HISTOGRAM_BINS).astype(np.int64), 0, HISTOGRAM_BINS - 1)
                self.counts += np.bincount(bins, minlength=HISTOGRAM_BINS)
            return len(results)
        for t, prob, valid in results:
            if self._error is not None:
                break
            self._queue.put(((t.y0, t.x0, t.height, t.width), prob, valid))
        return len(results)

    def histogram(self) -> tuple[np.ndarray, np.ndarray]:
        """Counts and edges (``HISTOGRAM_BINS`` bins over 0..1) of the valid scores put so far."""
        return self.counts.copy(), np.linspace(0.0, 1.0, HISTOGRAM_BINS + 1)

    def _items(self):
        while (item := self._queue.get()) is not None:
            if item is _ABORT:
                raise MapAborted("the run stopped before its map was complete")
            self.blocks += 1
            yield self.fmt.encode(*item, self.sinks)

    def _stored_items(self):
        """The map's blocks read back from the scene's stores (the second pass of a deferred threshold)."""
        from pipeline.io.cog import iter_blocks

        prob = store.open_array(self.scene.output_store, store.PROBABILITY)
        valid = store.open_array(self.scene.input_store, store.VALID)
        for y0, x0, h, w in iter_blocks(self.grid.height, self.grid.width):
            if not self._queue.empty() and self._queue.get_nowait() is _ABORT:
                raise MapAborted("the run stopped before its map was complete")
            self.blocks += 1
            yield self.fmt.encode((y0, x0, h, w), prob[y0:y0 + h, x0:x0 + w], valid[y0:y0 + h, x0:x0 + w], self.sinks)

    def _write(self) -> None:
        try:
            with storage.using(self.storage_options):
                items = self._stored_items() if self.deferred else self._items()
                publish_cog(self.dest, self.grid, self.fmt, items, self.tags)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller by close()
            self._error = exc
            if isinstance(exc, MapAborted) or self.deferred:
                return
            while self._queue.get() not in (None, _ABORT):  # let blocked puts return, until close() or abort()
                pass

    def abort(self) -> None:
        """Stop without a map: the temporary files are removed, nothing is published."""
        self._queue.put(_ABORT)
        if self._thread.is_alive():
            self._thread.join()

    def close(self, threshold: float | None = None, tags: dict[str, str] | None = None) -> list[BlockSink]:
        """Finish the COG (overviews, COG layout, publish) and return the fed sinks.

        A deferred map needs its ``threshold`` now (and may add ``tags``, e.g. the fit it came from).
        """
        if self.deferred:
            if threshold is None:
                raise ValueError("a map whose threshold the scene decides needs it to close: pass threshold")
            self.fmt = replace(self.fmt, threshold=float(threshold))
            for sink in self.sinks:
                sink.threshold = float(threshold)
            self.tags = {**self.tags, **(tags or {})}
            self._thread.start()
        else:
            self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self.sinks


class MapWriterHost:
    """A map writer process that writes one map, then the next: Ray runs it as an actor.

    A new actor is a new process with the writer's imports (about 2 s of CPU each, measured over
    an archive of small scenes); a session hands its idle host to the next scene instead.
    :meth:`open` starts a map with :class:`MapWriter`'s arguments; :meth:`close` or :meth:`abort`
    ends it and frees the heap it grew.
    """

    def __init__(self) -> None:
        self.writer: MapWriter | None = None

    def open(self, *args: Any, **kwargs: Any) -> None:
        """Start a map (:class:`MapWriter`'s arguments); the previous one must be closed or aborted."""
        if self.writer is not None:
            raise RuntimeError("this map writer is still writing a map: close or abort it first")
        self.writer = MapWriter(*args, **kwargs)

    def _current(self) -> MapWriter:
        if self.writer is None:
            raise RuntimeError("no map is open in this map writer")
        return self.writer

    def put(self, results: Sequence[tuple], kept: bool = False) -> int:
        """:meth:`MapWriter.put` of the open map."""
        return self._current().put(results, kept)

    def histogram(self) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`MapWriter.histogram` of the open map."""
        return self._current().histogram()

    def close(self, threshold: float | None = None, tags: dict[str, str] | None = None) -> list[BlockSink]:
        """:meth:`MapWriter.close` of the open map, which ends it (published or failed)."""
        try:
            return self._current().close(threshold, tags)
        finally:
            self._end()

    def abort(self) -> None:
        """:meth:`MapWriter.abort` of the open map, if one is."""
        if self.writer is not None:
            try:
                self.writer.abort()
            finally:
                self._end()

    def _end(self) -> None:
        self.writer = None
        heap.release_free_memory()  # the pages of this map's blocks and sinks, not kept for the next one


def start_host(node: str | None = None) -> Any:
    """A :class:`MapWriterHost` actor (no CPU claimed: it waits on the stream), on Ray node ``node`` if given."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    options: dict[str, Any] = {"num_cpus": 0}
    if node is not None:
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=False)
    return ray.remote(MapWriterHost).options(**options).remote()


def map_tags(pre: RunPlan) -> dict[str, str]:
    """What a map says about itself: its map spec (only what defines it) and the model's provenance."""
    return {"CHANGEMAP_CONFIG": json.dumps(pre.spec.stamp(), sort_keys=True), "CHANGEMAP_MODEL": pre.meta.model,
            "CHANGEMAP_WEIGHTS_SHA256": pre.meta.sha256, "CHANGEMAP_WEIGHTS_LICENSE": pre.meta.license}
