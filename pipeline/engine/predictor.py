"""The model actor: loads a model once and predicts batches of tiles (one actor per GPU, CPU fallback).

:class:`TilePredictor` is a plain class (tests call it directly); Ray runs it as a threaded
actor (:class:`pipeline.engine.pool.PredictorPool`) fed batches of tiles by the stream, from
just-decoded row segments (:meth:`TilePredictor.predict_chunks`), and, for scene statistics,
asked to measure them over halo windows read from ``input.zarr`` (:meth:`TilePredictor.measure`).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from models import LoadedWeights
from models.statistics import Moments, SceneStatistics, Stats
from pipeline import loader, storage
from pipeline.engine import heap
from pipeline.engine.tile_engine import Lanes, PhaseClock, TileEngine, forward_probability, normalize
from pipeline.io import store
from pipeline.tiling import Tile, Window, assemble


@dataclass(frozen=True)
class InferenceJob:
    """What a predictor needs to know about one scene."""

    input_store: str
    output_store: str
    halo: int
    bands: tuple[int, ...]  # 1-based
    storage: storage.StorageOptions = field(default_factory=storage.StorageOptions)  # for stores in object storage
    statistics: str = "window"  # "scene": windows clipped at the scene edge, scene statistics (models.statistics)
    scene_stats: Stats | None = None  # the measured scene statistics, set for the prediction pass
    shape: tuple[int, int, int] = (0, 0, 0)  # (height, width, tile) of a streamed scene (no store to read it from)
    fitted: dict | None = None  # a scene-fitted model's fit to this scene (models.fitting.FitReport.to_dict())


class TilePredictor:
    """Loads a model once and predicts batches of tiles of one or more scenes."""

    def __init__(self, model_name: str, weights: LoadedWeights | None, *, batch_size: int = 4,
                 device: str | None = None, threads: int | None = None, lanes: int = 1,
                 model_args: dict | None = None, compile: bool = False) -> None:
        if threads:  # torch threads of each lane (forward passes running at once): see cpu_lanes
            torch.set_num_threads(threads)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model_name, self.model_args = model_name, dict(model_args or {})
        self.model, self.meta = loader.build_loaded(model_name, weights, model_args)
        self.model.to(self.device)
        # A scene-fitted model sees nodata as NaN: its local mean of the change statistic leaves it out.
        self._nan_nodata = self.model.kind == "scene-fitted"
        if compile:  # opt-in: minutes of compilation, paid back on long GPU runs
            self.model = torch.compile(self.model)
        self.batch_size = batch_size
        self._lanes = Lanes(lanes)  # forward passes at once; one more batch is prepared meanwhile
        self.clock = PhaseClock()  # seconds of each prediction phase, over all scenes and calls
        self._buffers = threading.local()  # each calling thread's reused batch (see TileEngine.batches)
        self._scenes: dict[str, tuple] = {}
        self._engines: dict[str, TileEngine] = {}
        self._warmed: set[tuple] = set()
        self.calls = 0

    def phase_seconds(self) -> dict[str, float]:
        """Seconds this predictor has spent in each phase of prediction (:class:`pipeline.engine.tile_engine.PhaseClock`)."""
        return self.clock.totals()

    def warm_up(self, shape: tuple[int, ...], dtype: str) -> float:
        """One forward pass on a zero batch of ``shape`` ``(B, 2, C, h, w)``, once per shape and dtype.

        A GPU loads the kernels of a model and picks its convolution algorithms during the first
        pass of each shape; warmed while the stream decodes its first segments, that falls on no
        tile. Counted in the phase clock as ``warm-up``; returns its seconds (0 if done before).
        """
        if (shape, dtype) in self._warmed or self._nan_nodata:  # a scene-fitted model has no kernels to load
            return 0.0
        self._warmed.add((shape, dtype))
        begin = time.perf_counter()
        with self._lanes.shared(), self.clock.timed("warm-up"):
            forward_probability(self.model, self._prepare(np.zeros(shape, dtype)))
        return time.perf_counter() - begin

    def describe(self) -> dict[str, str]:
        """Where this predictor runs (for logs and tests)."""
        return {"device": str(self.device), "model": self.meta.model, "threads": str(torch.get_num_threads()),
                "size_divisor": str(self.model.size_divisor)}

    def _prepare(self, x: np.ndarray) -> torch.Tensor:
        """A ``(B, 2, C, h, w)`` raw batch, normalised on the model's device (as it is for a model that ``takes_raw``).

        On a GPU the raw batch (uint8 imagery: a quarter of float32's bytes) is copied from pinned
        memory without blocking, and normalised there; on the CPU numpy normalises it (faster
        than torch on one thread, see :func:`pipeline.engine.tile_engine.normalize`).
        """
        raw_input = getattr(self.model, "takes_raw", False)  # the model casts and scales its raw input itself
        if self.device.type == "cpu":
            return torch.from_numpy(np.ascontiguousarray(x) if raw_input else normalize(x, self.meta))
        raw = torch.from_numpy(np.ascontiguousarray(x))
        if self.device.type == "cuda":
            raw = raw.pin_memory()
        raw = raw.to(self.device, non_blocking=True)
        return raw if raw_input else normalize(raw, self.meta)

    def fit_scene(self, target: int, *samples: tuple[np.ndarray, np.ndarray]) -> dict:
        """Fit a scene-fitted model to a scene's sample of valid pixels; the fit (``FitReport.to_dict()``).

        ``samples`` are parts ``(before (n, C), after (n, C))`` the fit step read
        (:func:`pipeline.engine.fit.fit_model`); at most ``target`` of their pixels are kept, drawn
        with a fixed seed. The model is built for their band count.
        """
        before = np.concatenate([b for b, _ in samples])
        after = np.concatenate([a for _, a in samples])
        if len(before) > target:
            keep = np.sort(np.random.default_rng(0).choice(len(before), target, replace=False))
            before, after = before[keep], after[keep]
        model, _ = loader.build_loaded(self.model_name, None, {**self.model_args, "in_channels": int(before.shape[1])})
        return model.fit(before, after).to_dict()

    def _model(self, job: InferenceJob):
        """The model of one scene: the loaded one, or a scene-fitted model applying the scene's fit."""
        if job.fitted is None:
            return self.model
        from models.fitting import FitReport

        return self.model.for_scene(FitReport.from_dict(job.fitted)).to(self.device)

    def _engine(self, job: InferenceJob, height: int, width: int, tile: int) -> TileEngine:
        """An engine for one scene, sharing this predictor's lanes, phase clock and batch buffers."""
        return TileEngine(self._model(job), self._prepare, height=height, width=width, tile=tile, halo=job.halo,
                          batch_size=self.batch_size, statistics=job.statistics, lanes=self._lanes,
                          clock=self.clock, buffers=self._buffers, prepare_ahead=self.device.type == "cuda")

    def _scene(self, job: InferenceJob) -> tuple[TileEngine, Callable, Callable, Any]:
        """The engine and readers of one scene's stores (kept for the next batches of the scene)."""
        if job.output_store not in self._scenes:
            storage.install(job.storage)  # this actor's process reads/writes the stores with them
            if len(self._scenes) > 8:  # an actor serving an archive keeps a few scenes' handles only
                self._scenes.clear()
            image = store.open_array(job.input_store, store.IMAGE)
            valid = store.open_array(job.input_store, store.VALID)
            tile = store.check_layout(job.input_store, image, job.bands)
            band_index = np.asarray(job.bands) - 1
            engine = self._engine(job, valid.shape[0], valid.shape[1], tile)

            def read(w: Window) -> np.ndarray:
                return image[:, :, w.y0:w.y1, w.x0:w.x1][:, band_index]

            def read_valid(w: Window) -> np.ndarray:
                return valid[w.y0:w.y1, w.x0:w.x1]

            self._scenes[job.output_store] = (engine, read, read_valid, valid)
        return self._scenes[job.output_store]

    @heap.trimmed  # the batch's windows and casts: a long-lived actor keeps no heap of them
    def predict_chunks(self, job: InferenceJob, tiles: Sequence[Tile], keys: Sequence[tuple[int, int]],
                       *segments: tuple[np.ndarray, np.ndarray]) -> tuple[int, list[tuple[Tile, np.ndarray, np.ndarray]]]:
        """Predict ``tiles`` from just-decoded row segments (no zarr round trip), with the job's scene statistics if any.

        ``segments`` are ``(image (2, C, h, w) of the model's bands, valid (h, w))`` of the row
        segments keyed ``(row, first col)`` in ``keys`` that the tiles' windows cover (see
        :func:`pipeline.engine.stream.make_segments`). Returns how many tiles, and each tile's core
        probabilities (NaN where the tile has no valid pixel, which costs no forward pass) with
        its valid mask: two results, so the stream's driver fetches the count only. Calls run at
        once (the actor is threaded): one forward pass per lane, and on a GPU another call
        prepares its windows meanwhile.
        """
        height, width, tile = job.shape
        engine = self._engines.get(job.output_store)
        if engine is None:
            if len(self._engines) > 8:
                self._engines.clear()
            engine = self._engines[job.output_store] = self._engine(job, height, width, tile)
        images: dict[tuple[int, int], np.ndarray] = {}
        valids: dict[tuple[int, int], np.ndarray] = {}
        for (row, first), (image, valid) in zip(keys, segments):
            for i in range(-(-valid.shape[1] // tile)):  # the segment's chunks, as views
                images[(row, first + i)] = image[..., i * tile:(i + 1) * tile]
                valids[(row, first + i)] = valid[:, i * tile:(i + 1) * tile]
        found: dict[Tile, np.ndarray] = {}
        with_data = [t for t in tiles if valids[(t.row, t.col)].any()]

        def read(w: Window) -> np.ndarray:
            if not self._nan_nodata:
                return assemble(w, tile, images)
            x = assemble(w, tile, images).astype("float32")
            x[..., ~assemble(w, tile, valids)] = np.nan
            return x

        engine.predict(with_data, read, lambda t, core: found.__setitem__(t, core.astype("float32", copy=True)),
                       job.scene_stats)
        return len(tiles), [(t, found.get(t, np.full((t.height, t.width), np.nan, "float32")),
                             np.ascontiguousarray(valids[(t.row, t.col)])) for t in tiles]

    def _with_data(self, job: InferenceJob, tiles: Sequence[Tile]) -> list[Tile]:
        """Tiles without any valid pixel stay NaN (nodata) and cost nothing."""
        valid = self._scene(job)[3]
        return [t for t in tiles if valid[t.y0:t.y0 + t.height, t.x0:t.x0 + t.width].any()]

    def statistics_levels(self) -> list[list[str]]:
        """The levels in which the scene statistics are measured (one pass over the tiles each)."""
        return SceneStatistics(self.model).levels(self.meta.in_channels, self.model.size_divisor)

    def measure(self, job: InferenceJob, tiles: Sequence[Tile], level: list[str], fixed: Stats) -> dict[str, Moments]:
        """Summed moments of the ``level`` layer calls over the valid pixels of ``tiles``' cores."""
        engine, read, read_valid, _ = self._scene(job)
        return engine.measure(self._with_data(job, tiles), read, read_valid, level, fixed)


MAX_CPU_LANES = 4  # forward passes at once on a CPU actor (each holds a batch's activations)


def cpu_lanes(cores: int) -> tuple[int, int]:
    """How a CPU actor given ``cores`` runs its model: forward passes at once, and torch threads for each.

    Several single- or few-threaded passes at once do more than one pass over all the cores
    (convolutions do not scale linearly with threads).
    """
    lanes = max(1, min(cores, MAX_CPU_LANES))
    return lanes, max(1, cores // lanes)
