"""The one scheduler: a call per free slot, lost actors' batches sent again, errors raised once the calls are back."""
from __future__ import annotations

import os
import queue
import threading
import time

import pytest
import ray

from pipeline.engine.scheduler import Batch, Scheduler
from pipeline.errors import ChangemapError
from pipeline.tiling import make_tiles


class Worker:
    """An actor that answers a batch after ``seconds``, fails on a tile named ``bad``, or dies on one named ``die``."""

    def __init__(self, marker: str = "") -> None:
        self.marker = marker
        self.running = 0
        self.peak = 0
        self.lock = threading.Lock()

    def work(self, keys: list[str], seconds: float = 0.05) -> list[str]:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            if "die" in keys and self.marker and not os.path.exists(self.marker):
                open(self.marker, "w").close()
                os._exit(1)
            if "die-always" in keys:
                os._exit(1)
            if "bad" in keys:
                raise ValueError("a bad tile")
            time.sleep(seconds)
            return keys
        finally:
            with self.lock:
                self.running -= 1

    def busiest(self) -> int:
        return self.peak


class Pool:
    """A pool of ``slots`` slots over real actors, replacing a lost one as :class:`PredictorPool` does."""

    def __init__(self, actors: int, slots_per_actor: int, marker: str = "") -> None:
        self.remote = ray.remote(Worker).options(max_concurrency=slots_per_actor, num_cpus=0)
        self.marker = marker
        self.actors = [self.remote.remote(marker) for _ in range(actors)]
        self.idle: queue.Queue = queue.Queue()
        for actor in self.actors * slots_per_actor:
            self.idle.put(actor)
        self.replaced: dict[int, object] = {}
        self.lost_calls = 0

    def acquire(self, timeout=0.0):
        try:
            actor = self.idle.get(timeout=timeout) if timeout else self.idle.get_nowait()
        except queue.Empty:
            return None
        while id(actor) in self.replaced:
            actor = self.replaced[id(actor)]
        return actor

    def release(self, actor) -> None:
        self.idle.put(actor)

    def lost(self, actor) -> None:
        self.lost_calls += 1
        if id(actor) not in self.replaced:
            new = self.remote.remote(self.marker)
            self.actors = [new if a is actor else a for a in self.actors]
            self.replaced[id(actor)] = new


def _batches(keys: list[list[str]]) -> list[Batch]:
    """A batch of one tile per entry, in order (the entry's names are what the call sends)."""
    tiles = make_tiles(64, 64 * len(keys), 64)
    return [Batch((tiles[i],), i) for i in range(len(keys))]


def _send(names: list[list[str]], seconds: float = 0.05):
    return lambda actor, batch: (actor.work.remote(names[batch.index], seconds), None, None)


def test_every_batch_is_sent_once_and_no_slot_takes_two_calls(ray_local):
    names = [[f"t{i}"] for i in range(12)]
    pool = Pool(actors=2, slots_per_actor=2)
    scheduler = Scheduler(pool, _send(names, 0.1))
    done = scheduler.map(_batches(names))
    assert sorted(map(tuple, done)) == sorted(map(tuple, names)) and scheduler.retried == []
    assert max(ray.get([a.busiest.remote() for a in pool.actors])) == 2  # one call per slot, two slots an actor
    assert pool.idle.qsize() == 4  # every slot given back


def test_a_lost_actors_batch_goes_to_its_replacement_and_is_reported(ray_local, tmp_path):
    names = [["a"], ["b"], ["die"], ["c"]]
    pool = Pool(actors=1, slots_per_actor=1, marker=str(tmp_path / "died"))
    retried = []
    scheduler = Scheduler(pool, _send(names), on_retry=lambda b: retried.append(b.index))
    done = scheduler.map(_batches(names))
    assert sorted(map(tuple, done)) == [("a",), ("b",), ("c",), ("die",)]
    assert retried == [2] and scheduler.retried == [_batches(names)[2].tiles[0].key] and pool.lost_calls == 1
    assert (tmp_path / "died").exists()


def test_a_batch_lost_on_every_attempt_fails_the_run_naming_its_tiles(ray_local):
    names = [["die-always"]]
    pool = Pool(actors=1, slots_per_actor=1)
    scheduler = Scheduler(pool, _send(names), attempts=3)
    with pytest.raises(ChangemapError, match=r"tiles r0c0 failed 3 times because their model actor was lost"):
        scheduler.map(_batches(names))
    assert pool.lost_calls == 3


def test_an_error_stops_the_sending_and_is_raised_once_the_calls_in_flight_are_back(ray_local):
    names = [["slow1"], ["bad"], ["slow2"], ["never"], ["never2"]]
    pool = Pool(actors=1, slots_per_actor=3)
    scheduler = Scheduler(pool, _send(names, 0.3))
    scheduler.add(_batches(names))
    finished = []
    with pytest.raises(ValueError, match="a bad tile"):
        for call in scheduler.run():
            finished.append(ray.get(call.done))
    assert sorted(map(tuple, finished)) == [("slow1",), ("slow2",)]  # the calls in flight came back first
    assert not scheduler.calls and len(scheduler.queue) == 2  # the rest was never sent
