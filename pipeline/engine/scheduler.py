"""The one scheduler of the model actors: work to free actor slots, bounded in flight, lost actors' work retried.

The stream (:func:`pipeline.engine.stream.run_stream`) and the scene-statistics passes
(:mod:`pipeline.engine.fit`) both hand their batches to a :class:`Scheduler`. It sends each
batch to a free slot of the pool (a call per slot at most, so the work in flight is bounded by
the pool's slots), collects the finished calls, and queues a batch again when its actor was
lost, on the actor the pool starts in its place (the run then says which tiles were predicted
twice). An error in a call stops the sending; the calls in flight are waited for and the first
error is raised. Ray's own task retries cover the stream's CPU tasks (a worker lost mid-decode).
"""
from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import ray
from ray.exceptions import RayActorError

from pipeline.errors import ChangemapError
from pipeline.tiling import Tile

log = logging.getLogger("changemap.scheduler")


@dataclass(frozen=True)
class StreamTuning:
    """The stream's tuning constants, stated once (the figures behind them: docs/benchmarks)."""

    #: Pixels of a tile row one decode task reads, stores and hands on as one object: a task per ~1 MP
    #: amortises opening the pair, Ray's per-task cost and the store's per-write cost over several chunks.
    segment_width: int = 2048
    #: Bytes of one decoded segment (both dates of the model's bands and the valid mask) at most: a
    #: scene of many bands gets narrower segments (13 uint16 bands: one 512-px chunk, 13.6 MiB, not
    #: 54 MiB), because every batch in flight pins the segments under its windows, three rows of them.
    segment_bytes: int = 24 * 2**20
    #: Batches whose segments are decoded ahead of the model, per actor slot.
    lookahead_batches: int = 2
    #: A decoded segment is kept for a batch at most this many lookaheads later; one needed further on
    #: is read back from input.zarr then, so the stream holds a bounded number of segments whatever
    #: the scene's width.
    hold_factor: int = 2
    #: Decode tasks submitted ahead of need and not yet finished, at most, per forward pass the pool runs
    #: at once: Ray starts a worker process (150-220 MiB) for each task running at once. A decode task
    #: did 10 MP/s on an H200 node, so 16 of them feed a model of 124 MP/s.
    decodes_per_lane: int = 16
    #: Bytes of decoded segments (running, ready or held for a later batch) the stream keeps at most
    #: for CPU model actors, and for GPU ones (at most half the object store either way): it decodes
    #: ahead and holds segments for the next row's halos within this; a segment let go is read back
    #: from input.zarr when its batch comes. A CPU actor is slower than its decodes, so a short
    #: lookahead costs it nothing (a 13-band Sentinel-2 tile's peak memory: 1.198 x a 2048² pair's
    #: at 256 MiB, 1.29 x at 1 GiB); a GPU needs the long one (the paced stream of a simulated GPU
    #: node at TinyCD's rate: 5.7 x its bound at 256 MiB, 1.65 x at 1 GiB; docs/benchmarks).
    held_bytes: int = 256 * 2**20
    held_bytes_gpu: int = 2**30
    #: CPUs a stream task claims: Ray starts a worker process for each task it runs at once.
    task_cpus: float = 0.5
    #: Room in a local runtime's object store, in row segments (about three tile rows are held).
    store_segments: int = 48
    #: Results waiting for the map writer, per actor slot, before the stream waits for it.
    writes_per_slot: int = 4
    #: Tries of one batch whose actor was lost before the run fails naming its tiles.
    attempts: int = 3


TUNING = StreamTuning()


@dataclass(frozen=True)
class Batch:
    """Tiles sent to a model actor in one call, with their place in the run's order and the tries so far."""

    tiles: tuple[Tile, ...]
    index: int = 0
    attempt: int = 0

    @property
    def keys(self) -> list[str]:
        """The tiles' keys, e.g. ``['r0c0', 'r0c1']``."""
        return [t.key for t in self.tiles]


@dataclass
class Call:
    """One batch in flight on an actor slot: ``done`` completes with the call; ``result`` is left in the object store."""

    batch: Batch
    actor: Any
    done: ray.ObjectRef
    result: Any = None
    context: Any = None  # what the sender keeps with the call (e.g. the segments it needed)


Send = Callable[[Any, Batch], tuple[ray.ObjectRef, Any, Any]]  # (actor, batch) -> (done, result, context)


def lost_tiles_error(batch: Batch, attempts: int, exc: BaseException) -> ChangemapError:
    """The error of tiles whose actor was lost on every attempt."""
    return ChangemapError(
        f"tiles {', '.join(batch.keys)} failed {attempts} times because their model actor was lost "
        f"({type(exc).__name__}); check the workers' memory (CUDA out of memory?) and logs, then run the same "
        "command again: finished tiles are kept")


@dataclass
class Scheduler:
    """Sends batches to the free slots of ``pool`` with ``send``; see the module docstring.

    ``pool`` lends slots: ``acquire(timeout) -> actor | None``, ``release(actor)``, and replaces a
    dead actor with ``lost(actor)``.
    """

    pool: Any
    send: Send
    attempts: int = TUNING.attempts
    on_retry: Callable[[Batch], None] | None = None
    queue: deque = field(default_factory=deque)  # batches to send, in order
    calls: dict = field(default_factory=dict)  # done ref -> Call
    retried: list[str] = field(default_factory=list)  # keys of tiles sent again after a lost actor
    error: BaseException | None = None

    def add(self, batches: Iterable[Batch]) -> None:
        """Queue batches to send after those already queued."""
        self.queue.extend(batches)

    def upcoming(self, n: int) -> list[Batch]:
        """The next ``n`` batches to send (for work done ahead of them, e.g. decoding their segments)."""
        return [self.queue[i] for i in range(min(n, len(self.queue)))]

    @property
    def busy(self) -> bool:
        """Whether batches are queued or in flight (queued ones no longer count after an error)."""
        return bool(self.calls) or (bool(self.queue) and self.error is None)

    def fill(self, timeout: float = 0.0) -> int:
        """Send queued batches to free slots; waits up to ``timeout`` for the first slot. Returns how many were sent."""
        sent = 0
        while self.queue and self.error is None:
            actor = self.pool.acquire(timeout=0.0 if sent or self.calls else timeout)
            if actor is None:
                break
            batch = self.queue.popleft()
            done, result, context = self.send(actor, batch)
            self.calls[done] = Call(batch, actor, done, result, context)
            sent += 1
        return sent

    def wait(self, also: Sequence[ray.ObjectRef] = (), timeout: float = 1.0) -> list[Call]:
        """The calls finished within ``timeout`` (their slots given back), also waking when one of ``also`` is ready.

        A call whose actor was lost goes back to the front of the queue, or fails the run after
        :attr:`attempts`; another error is kept in :attr:`error` (sending stops) and raised by
        :meth:`raise_error` once nothing is in flight.
        """
        waiting = list(self.calls) + list(also)
        if not waiting:
            return []
        ready, _ = ray.wait(waiting, num_returns=1, timeout=timeout, fetch_local=False)  # results stay where they are
        finished = []
        for ref in ready:
            call = self.calls.pop(ref, None)
            if call is None:  # one of ``also``
                continue
            self.pool.release(call.actor)
            try:
                ray.get(ref)
            except RayActorError as exc:
                self._lost(call, exc)
                continue
            except Exception as exc:  # noqa: BLE001 - kept, raised once the calls in flight are back
                self.error = self.error or exc
                continue
            finished.append(call)
        return finished

    def _lost(self, call: Call, exc: RayActorError) -> None:
        self.pool.lost(call.actor)
        batch = call.batch
        if batch.attempt + 1 >= self.attempts:
            self.error = self.error or lost_tiles_error(batch, self.attempts, exc)
            return
        self.retried += batch.keys
        log.warning("a model actor was lost; retrying its %d tile(s) %s (attempt %d of %d)", len(batch.tiles),
                    ", ".join(batch.keys), batch.attempt + 2, self.attempts)
        if self.on_retry is not None:
            self.on_retry(batch)
        self.queue.appendleft(replace(batch, attempt=batch.attempt + 1))

    def raise_error(self) -> None:
        """Raise the first error once no call is in flight (call when :attr:`busy` is false)."""
        if self.error is not None:
            raise self.error

    def run(self) -> Iterator[Call]:
        """Send every queued batch and yield each finished call; raises the first error at the end."""
        while self.busy:
            self.fill(timeout=5.0)
            yield from self.wait(timeout=1.0)
        self.raise_error()

    def map(self, batches: Iterable[Batch]) -> list[Any]:
        """Send ``batches`` and return their calls' ``done`` values in completion order."""
        self.add(batches)
        return [ray.get(call.done) for call in self.run()]
