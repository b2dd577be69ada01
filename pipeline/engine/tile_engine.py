"""The one window/batch/stitch engine of tiled prediction.

Used by the Ray predictors (windows read from ``input.zarr``) and by in-memory prediction
(windows cut from an array): both hand it a ``read(window) -> raw (2, C, h, w)`` function and a
``write(tile, core probability)`` function. With ``statistics="scene"`` windows are clipped at
the scene edge and the window-dependent layers use statistics measured over the whole scene
(:mod:`models.statistics`).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager

import numpy as np
import torch

from models import ChangeModel, WeightsMeta
from models.statistics import Moments, SceneStatistics, Stats, add_moments, measure_levels
from pipeline.tiling import (
    Tile,
    Window,
    batch_by_shape,
    core_offset,
    pad_window,
    padded_shape,
    statistics_weights,
    tile_window,
)


class PhaseClock:
    """Seconds spent in each phase of prediction, summed over the threads that run them.

    Phases of :meth:`TileEngine.predict`: ``windows`` (cut and stack a batch's windows), ``lane
    wait`` (wait for a free lane), ``to device`` (normalise, and start the copy to a GPU),
    ``forward`` (the forward pass and the probabilities back on the host: a GPU's copy and
    compute end there) and ``results`` (each tile's core handed on); a GPU predictor adds
    ``warm-up`` (its first pass of a shape, :meth:`pipeline.engine.predictor.TilePredictor.warm_up`).
    """

    def __init__(self) -> None:
        self._seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Add the block's wall time to ``phase``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            with self._lock:
                self._seconds[phase] = self._seconds.get(phase, 0.0) + time.perf_counter() - start

    def totals(self) -> dict[str, float]:
        """Seconds per phase so far."""
        with self._lock:
            return dict(self._seconds)


class Lanes:
    """How many forward passes of one model may run at once, from several threads.

    A CPU actor runs one pass per lane with a share of its cores (two single-threaded passes
    did 37 % more than one two-threaded pass of TinyCD on 2 cores); a GPU actor has one lane.
    Scene statistics install hooks in the model, so their passes take every lane.
    """

    def __init__(self, lanes: int = 1) -> None:
        self.lanes = max(1, lanes)
        self._free = threading.Semaphore(self.lanes)
        self._gate = threading.Lock()  # one exclusive taker at a time, so two never hold part of the lanes each

    @contextmanager
    def shared(self) -> Iterator[None]:
        """One lane."""
        with self._free:
            yield

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Every lane: no other pass runs meanwhile."""
        with self._gate:
            for _ in range(self.lanes):
                self._free.acquire()
        try:
            yield
        finally:
            for _ in range(self.lanes):
                self._free.release()


Read = Callable[[Window], np.ndarray]
Write = Callable[[Tile, np.ndarray], None]


def normalize(raw, meta: WeightsMeta):
    """``(..., C, H, W)`` raw values -> float32 model input ``(raw * scale - mean) / std``.

    Takes a numpy array or a torch tensor (normalised where it lies, e.g. on the GPU). Computed
    as one multiply-add per value in place (``raw * (scale / std) - mean / std``): a third of the
    passes over memory, equal to the textbook form within float32 rounding.
    """
    c = raw.shape[-3]
    gain = np.asarray(meta.scale, "float64") / np.asarray(meta.std, "float64")
    offset = -np.asarray(meta.mean, "float64") / np.asarray(meta.std, "float64")
    gain, offset = gain.astype("float32").reshape(c, 1, 1), offset.astype("float32").reshape(c, 1, 1)
    if isinstance(raw, torch.Tensor):
        x = raw.float() if raw.dtype != torch.float32 else raw.clone()
        return x.mul_(torch.from_numpy(gain).to(x.device)).add_(torch.from_numpy(offset).to(x.device))
    # numpy casts and scales in one buffered pass: a batch of four 640² pairs took 5 ms, against
    # 19 ms for torch's cast, multiply and add on one CPU thread; the values are the same.
    x = np.empty(raw.shape, "float32")
    np.multiply(raw, gain, out=x, dtype="float32")
    x += offset
    return x


def forward_probability(model: ChangeModel, x: torch.Tensor) -> np.ndarray:
    """Change probabilities ``(B, h, w)`` of a normalised batch ``x (B, 2, C, h, w)`` on the model's device.

    Runs under ``torch.inference_mode``, with autocast on CUDA.
    """
    with torch.inference_mode(), torch.autocast(x.device.type, enabled=x.device.type == "cuda"):
        logits = model(x)
    return model.change_probability(logits.float()).cpu().numpy()


class TileEngine:
    """Predicts tiles of one scene from halo windows, in batches of one window shape.

    Args:
        model: a model in eval mode on ``device``.
        prepare: raw batch ``(B, 2, C, h, w)`` numpy -> normalised tensor on the device.
        height, width: the scene's size; tile, halo: core tile side and context margin.
        statistics: ``window`` (reflect-padded windows, window statistics) or ``scene``.
        lanes: how many callers on several threads may use the model at once (one per GPU);
            windows are read and stacked outside them.
        clock: where the seconds of each phase of :meth:`predict` are added up.
        buffers: where each calling thread keeps its batch buffer (shared by the engines of one
            predictor, so a thread holds one whatever the number of scenes).
        prepare_ahead: ``prepare`` runs before the lane is taken, not in it. On a GPU it copies
            the batch to pinned memory and starts its copy to the device: host work that would
            otherwise leave the GPU idle between passes, and now overlaps another caller's pass.
            On a CPU ``prepare`` normalises with the cores a lane stands for, so it runs in it.
    """

    def __init__(self, model: ChangeModel, prepare: Callable[[np.ndarray], torch.Tensor], *, height: int,
                 width: int, tile: int, halo: int, batch_size: int = 4, statistics: str = "window",
                 lanes: Lanes | None = None, clock: PhaseClock | None = None,
                 buffers: threading.local | None = None, prepare_ahead: bool = False) -> None:
        self.model, self.prepare, self.prepare_ahead = model, prepare, prepare_ahead
        self.lanes = lanes or Lanes(1)
        self.clock = clock or PhaseClock()
        self._buffers = buffers or threading.local()  # each calling thread's reused batch (see batches)
        self.height, self.width, self.tile, self.halo = height, width, tile, halo
        self.batch_size, self.statistics = batch_size, statistics
        # A scene-fitted model reads nodata as NaN, and beyond the scene as nodata (not reflected).
        self.nan_padding = getattr(model, "kind", "deep") == "scene-fitted"
        self._scene: SceneStatistics | None = None

    def window(self, t: Tile) -> Window:
        """The model's input window of a tile."""
        return tile_window(t, self.tile, self.halo, self.model.size_divisor, self.height, self.width,
                           clipped=self.statistics == "scene")

    def batches(self, tiles: Sequence[Tile], read: Read) -> Iterator[tuple[list[Tile], list[Window], np.ndarray]]:
        """``(tiles, windows, raw (B, 2, C, h, w))`` in batches of one padded window shape.

        A batch is stacked into this thread's buffer, reused while the shape holds: the caller is
        done with it when it asks for the next. A GPU's batch of sixteen 640² RGB pairs is 39 MiB,
        over glibc's largest threshold for reusing freed heap (32 MiB): a new one would be mapped
        and faulted in page by page every time. Null model, 8192², batches of 16 on 2 CPU lanes:
        the actor's ``windows`` took 0.49-0.52 s instead of 0.72-1.15 s (two runs each).
        """
        windows = {t: self.window(t) for t in tiles}
        for batch in batch_by_shape(list(tiles), lambda t: padded_shape(windows[t]), self.batch_size):
            wins = [windows[t] for t in batch]
            raws = [pad_window(read(w), w, self.nan_padding) for w in wins]
            yield batch, wins, np.stack(raws, out=self._stacked((len(raws), *raws[0].shape), raws[0].dtype))

    def _stacked(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """This thread's batch buffer of ``shape`` and ``dtype``."""
        held = getattr(self._buffers, "stack", None)
        if held is None or held.shape != shape or held.dtype != dtype:
            held = self._buffers.stack = np.empty(shape, dtype)
        return held

    def predict(self, tiles: Sequence[Tile], read: Read, write: Write, scene_stats: Stats | None = None) -> int:
        """Predict ``tiles`` and hand each tile's core probability to ``write``; returns how many."""
        clock, batches = self.clock, self.batches(tiles, read)
        while True:
            with clock.timed("windows"):
                item = next(batches, None)
            if item is None:
                return len(tiles)
            batch, wins, x = item
            if self.prepare_ahead:
                with clock.timed("to device"):
                    x = self.prepare(x)
            with ExitStack() as held:
                with clock.timed("lane wait"):
                    held.enter_context(self.lanes.exclusive() if scene_stats is not None else self.lanes.shared())
                if scene_stats is not None:
                    held.enter_context(self.scene_statistics().fixed(scene_stats))
                if not self.prepare_ahead:
                    with clock.timed("to device"):
                        x = self.prepare(x)
                with clock.timed("forward"):
                    prob = forward_probability(self.model, x)
            with clock.timed("results"):
                for t, w, p in zip(batch, wins, prob):
                    top, left = core_offset(t, w)
                    write(t, p[top:top + t.height, left:left + t.width])

    def scene_statistics(self) -> SceneStatistics:
        """The model's window-dependent layers (raises ``StatisticsUnsupported`` for attention models)."""
        if self._scene is None:
            self._scene = SceneStatistics(self.model)
        return self._scene

    def levels(self, in_channels: int) -> list[list[str]]:
        """The levels in which the scene statistics are measured (one pass over the tiles each)."""
        return self.scene_statistics().levels(in_channels, self.model.size_divisor)

    def measure(self, tiles: Sequence[Tile], read: Read, read_valid: Read, level: list[str],
                fixed: Stats) -> dict[str, Moments]:
        """Summed moments of the ``level`` layer calls over the valid pixels of ``tiles``' cores."""
        total: dict[str, Moments] = {}
        for batch, wins, x in self.batches(tiles, read):
            weights = np.stack([statistics_weights(t, w, pad_window(read_valid(w), w)) for t, w in zip(batch, wins)])
            with self.lanes.exclusive():
                add_moments(total, self.scene_statistics().collect(self.prepare(x), torch.from_numpy(weights), level,
                                                                   fixed))
        return total

    def measure_scene(self, tiles: Sequence[Tile], read: Read, read_valid: Read, in_channels: int) -> Stats:
        """All levels' statistics, measured here in one process (in-memory prediction)."""
        return measure_levels(self.levels(in_channels),
                              lambda level, fixed: self.measure(tiles, read, read_valid, level, fixed))
