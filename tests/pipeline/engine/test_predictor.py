"""Inference: reflect-padded windows, one writer per chunk, Ray actors, stitching without seams."""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import models
from models.base import ChangeModel
from models.registry import _REGISTRY, register_model
from pipeline import loader
from pipeline.checks import plan_grid
from pipeline.engine import fit
from pipeline.engine.pool import GPU_BATCH_SIZE, PredictorPool, default_batch_size
from pipeline.engine.predictor import InferenceJob, TilePredictor
from pipeline.errors import ChangemapError
from pipeline.io import store
from pipeline.learn.predict import normalize, predict_image
from pipeline.loader import select_bands
from pipeline.tiling import halo_window, make_tiles, pad_window
from tests import helpers

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


class LocalDiff(ChangeModel):
    """A window-independent model (3x3 convs only, receptive field 9 px): tiling must be exact."""

    size_divisor = 8

    def __init__(self, in_channels: int = 3, num_classes: int = 1) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(*[torch.nn.Conv2d(2 * in_channels if i == 0 else 8, 8 if i < 3 else 1, 3, padding=1)
                                         for i in range(4)])

    def forward_pair(self, before, after):
        return self.net(torch.cat([before, after], 1))


@pytest.fixture(scope="module")
def local_diff():
    if "test-localdiff" not in _REGISTRY:
        register_model("test-localdiff", "test model")(LocalDiff)
    yield "test-localdiff"


@pytest.fixture
def stores(synthetic, tmp_path):
    alignment = plan = plan_grid(str(synthetic["before"]), str(synthetic["after"]))
    inp, out = str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr")
    helpers.ingest_pair(plan, inp, tile=64)
    store.create_output_store(out, alignment.grid, 64)
    return alignment, inp, out


def test_read_window_reflects_outside_the_scene():
    image = np.arange(2 * 1 * 6 * 5).reshape(2, 1, 6, 5)
    tile = make_tiles(6, 5, 4)[0]
    w = halo_window(tile, 2, 8, 6, 5)
    win = pad_window(image[:, :, w.y0:w.y1, w.x0:w.x1][:, np.array([0])], w)
    assert win.shape == (2, 1, 8, 8)
    np.testing.assert_array_equal(win[0, 0, 2:, 2:7], image[0, 0, :6, :5])
    np.testing.assert_array_equal(win[0, 0, 0, 2:7], image[0, 0, 2, :5])  # row -2 reflects row 2


def test_each_phase_of_prediction_is_timed_where_it_happens():
    """A forward pass that takes 50 ms lands in ``forward``, a lane held by another caller for 0.5 s in
    ``lane wait``, a slow window read in ``windows``: the phases say where an actor's time goes."""
    import threading
    import time

    from pipeline.engine.tile_engine import Lanes, PhaseClock, TileEngine

    class Slow(LocalDiff):
        def forward_pair(self, before, after):
            time.sleep(0.05)
            return super().forward_pair(before, after)

    def read(w):
        time.sleep(0.02)
        return np.zeros((2, 3, w.y1 - w.y0, w.x1 - w.x0), "float32")

    lanes, clock = Lanes(1), PhaseClock()
    engine = TileEngine(Slow().eval(), torch.from_numpy, height=64, width=64, tile=32, halo=8, batch_size=2,
                        lanes=lanes, clock=clock)
    cores, held = [], threading.Event()

    def other_caller() -> None:  # holds the only lane for 0.5 s
        with lanes.shared():
            held.set()
            time.sleep(0.5)

    threading.Thread(target=other_caller).start()
    held.wait()
    assert engine.predict(make_tiles(64, 64, 32), read, lambda t, core: cores.append(core.shape)) == 4
    seconds = clock.totals()
    assert cores == [(32, 32)] * 4 and set(seconds) == {"windows", "lane wait", "to device", "forward", "results"}
    assert seconds["forward"] >= 2 * 0.05 and seconds["windows"] >= 4 * 0.02  # two batches of two windows
    assert 0.3 <= seconds["lane wait"] < 0.5 + 0.5 and seconds["results"] < seconds["forward"]


def test_a_gpu_engine_prepares_its_batch_while_another_pass_holds_the_lane():
    """``prepare_ahead`` (GPU actors): the pinned copy and the copy to the device overlap another pass.

    On a CPU the batch is normalised in the lane, with the cores the lane stands for.
    """
    import threading

    from pipeline.engine.tile_engine import Lanes, TileEngine

    for ahead in (True, False):
        lanes, prepared, released, held = Lanes(1), [], [], threading.Event()

        def prepare(x, prepared=prepared):
            prepared.append(time.perf_counter())
            return torch.from_numpy(x)

        def other_pass(lanes=lanes, released=released, held=held) -> None:  # holds the only lane for 0.3 s
            with lanes.shared():
                held.set()
                time.sleep(0.3)
                released.append(time.perf_counter())

        engine = TileEngine(LocalDiff().eval(), prepare, height=32, width=32, tile=32, halo=8, batch_size=1,
                            lanes=lanes, prepare_ahead=ahead)
        threading.Thread(target=other_pass).start()
        held.wait()
        assert engine.predict(make_tiles(32, 32, 32), lambda w: np.zeros((2, 3, w.y1 - w.y0, w.x1 - w.x0), "float32"),
                              lambda t, core: None) == 1
        assert (prepared[0] < released[0]) is ahead


def test_a_warm_up_is_one_pass_per_batch_shape_timed_as_its_own_phase():
    """GPU actors run one pass of the run's batch shape while the first segments decode (kernels load then)."""
    predictor = TilePredictor("tinycd", models.resolve_weights("tinycd", "levir"), batch_size=2, threads=1)
    assert predictor.warm_up((2, 2, 3, 64, 64), "uint8") > 0
    assert predictor.warm_up((2, 2, 3, 64, 64), "uint8") == 0.0  # once per shape
    assert predictor.warm_up((1, 2, 3, 64, 64), "uint8") > 0  # the last, smaller batch is a new shape
    seconds = predictor.phase_seconds()
    assert set(seconds) == {"warm-up"} and seconds["warm-up"] > 0


def test_band_selection_is_checked():
    meta = models.default_meta("tinycd")
    assert select_bands(meta, 4, None) == (1, 2, 3)
    assert select_bands(meta, 4, (3, 2, 1)) == (3, 2, 1)
    with pytest.raises(ChangemapError, match="takes 3 bands but --bands selects 2"):
        select_bands(meta, 4, (1, 2))
    with pytest.raises(ChangemapError, match="only 2 band"):
        select_bands(meta, 2, None)


def test_predictor_writes_every_tile_with_data_and_skips_empty_ones(stores):
    alignment, inp, out = stores
    predictor = TilePredictor("tinycd", models.resolve_weights("tinycd", "levir"), batch_size=3, threads=1)
    job = InferenceJob(inp, out, 16, (1, 2, 3))
    tiles = make_tiles(alignment.grid.height, alignment.grid.width, 64)
    assert helpers.predict_stores(predictor, job, tiles) == len(tiles)
    prob = store.open_array(out, store.PROBABILITY)[:]
    valid = store.open_array(inp, store.VALID)[:]
    assert np.isfinite(prob[valid]).all() and (prob[valid] >= 0).all() and (prob[valid] <= 1).all()
    # The synthetic "new buildings" come out as more likely changed than their surroundings.
    assert prob[45:85, 65:95].mean() > prob[valid].mean()


def test_tiled_prediction_equals_a_whole_scene_pass_for_a_window_independent_model(stores, local_diff):
    """Stitching is exact: with halo >= receptive field, tiles reproduce the one-pass result."""
    alignment, inp, out = stores
    predictor = TilePredictor(local_diff, None, batch_size=4, threads=1)
    helpers.predict_stores(predictor, InferenceJob(inp, out, 16, (1, 2, 3)),
                           make_tiles(alignment.grid.height, alignment.grid.width, 64))
    tiled = store.open_array(out, store.PROBABILITY)[:]
    image = store.open_array(inp, store.IMAGE)[:]
    meta = predictor.meta
    # One pass over the whole scene, reflect-padded at the scene edge like the tiles (16 px, then to /8).
    x = torch.from_numpy(np.pad(image, ((0, 0), (0, 0), (16, 18), (16, 20)), mode="reflect")).float()[None]
    mean, std = torch.tensor(meta.mean).view(1, 1, 3, 1, 1), torch.tensor(meta.std).view(1, 1, 3, 1, 1)
    with torch.inference_mode():
        whole = predictor.model.change_probability(predictor.model((x * meta.scale - mean) / std))[0, 16:246, 16:316]
    valid = store.open_array(inp, store.VALID)[:]
    # Tiles fully inside the nodata stripe are skipped (NaN); everything else must match.
    has_pred = ~np.isnan(tiled)
    assert has_pred[valid].all()
    np.testing.assert_allclose(tiled[has_pred], whole.numpy()[has_pred], atol=1e-5)


def test_ray_actor_pool_predicts_all_tiles(synthetic, tmp_path, ray_local, monkeypatch):
    from pipeline.config import MapSpec, RunOptions
    from pipeline.engine import stream, workdir

    seen = []

    class Seen:
        def __init__(self, *args, **kwargs) -> None:
            pass

        def __call__(self, done, total) -> None:
            seen.append((done, total))

        def note(self, text) -> None:
            pass

    monkeypatch.setattr(stream, "Progress", Seen)
    spec = MapSpec(before=str(synthetic["before"]), after=str(synthetic["after"]), tile=64, halo=16,
                   probability="float32")
    run = RunOptions(output=str(tmp_path / "map.tif"), workers=2, batch_size=2, workdir=str(tmp_path / "w"))
    made = helpers.make_map(spec, run)
    stats = made.stream
    assert stats.tiles == 20 and made.workers == 2 and made.device == "cpu"
    assert seen[-1] == (20, 20) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    paths = workdir.paths_for(MapSpec(**{**spec.model_dump(), "model": "tinycd"}), run)
    inp, out = paths.input_store, paths.output_store
    prob = store.open_array(out, store.PROBABILITY)[:]
    valid = store.open_array(inp, store.VALID)[:]
    assert np.isfinite(prob[valid]).all()
    # Same numbers as one in-process predictor (actors are interchangeable).
    ref = TilePredictor("tinycd", models.resolve_weights("tinycd", "levir"), batch_size=2, threads=1)
    alignment = plan_grid(spec.before, spec.after)
    tiles = make_tiles(alignment.grid.height, alignment.grid.width, 64)
    ref_out = str(tmp_path / "ref.zarr")
    store.create_output_store(ref_out, alignment.grid, 64)
    helpers.predict_stores(ref, InferenceJob(inp, ref_out, 16, (1, 2, 3)), tiles)
    np.testing.assert_allclose(prob[valid], store.open_array(ref_out, store.PROBABILITY)[:][valid], atol=1e-5)


def test_the_batch_size_is_the_devices_default_unless_one_is_asked_for(ray_local):
    """No ``--batch-size``: 16 windows per pass on GPUs (the fastest measured); on this GPU-less cluster 4 for a
    deep model, 1 for a scene-fitted one (its batch gains nothing and pins three rows of segments a window)."""
    from pipeline.config import RunOptions

    assert RunOptions().batch_size is None
    assert default_batch_size(gpus=1) == default_batch_size(gpus=1, kind="scene-fitted") == GPU_BATCH_SIZE
    assert default_batch_size(gpus=0) == 4 and default_batch_size(gpus=0, kind="scene-fitted") == 1
    for model, asked, expected in (("tinycd", None, 4), ("tinycd", 3, 3), ("irmad", None, 1), ("cva", 3, 3)):
        pool = PredictorPool(model, None, workers=1, batch_size=asked)
        try:
            assert pool.batch_size == expected and pool.device == "cpu"
        finally:
            pool.close()


def test_a_pool_warms_its_gpu_actors_only(ray_local):
    """The decision is the pool's device: here CPU actors stand in for GPU ones once it says cuda."""
    pool = PredictorPool("tinycd", None, workers=1, batch_size=2)
    try:
        pool.warm_up((2, 2, 3, 64, 64), "uint8")
        assert "warm-up" not in pool.phase_seconds()  # a CPU pool: no pass
        pool.device = "cuda"
        pool.warm_up((2, 2, 3, 64, 64), "uint8")
        deadline = time.monotonic() + 60
        while "warm-up" not in pool.phase_seconds() and time.monotonic() < deadline:  # not waited for by the pool
            time.sleep(0.1)
        assert pool.phase_seconds()["warm-up"] > 0
    finally:
        pool.close()


def test_a_pool_right_after_another_waits_for_the_cpus_its_actors_give_back(ray_local):
    """Killed actors give their CPUs back a moment later: a pool of two started at once is not refused for it
    (CI once failed here: 'the Ray cluster has free CPUs (1)'), while one the cluster can never hold still is."""
    for workers in (1, 2):
        pool = PredictorPool("tinycd", None, workers=workers)
        try:
            assert len(pool.actors) == workers
        finally:
            pool.close()
    with pytest.raises(ChangemapError, match="--workers 3 asks for more inference actors"):
        PredictorPool("tinycd", None, workers=3)  # 2 CPUs: refused at once, no waiting


def test_more_workers_than_the_cluster_can_place_is_a_clear_error(ray_local):
    with pytest.raises(ChangemapError, match="--workers 9 asks for more inference actors than the Ray cluster has"):
        PredictorPool("tinycd", None, workers=9)


@pytest.fixture(scope="module")
def levir_crop_stores(tmp_path_factory):
    """Stores of a real, fully valid 256 x 256 crop of the shipped LEVIR-CD example pair (tiles of 128)."""
    from tests.data.levir_archive import _write_crop

    root = tmp_path_factory.mktemp("crop")
    for date in ("A", "B"):
        _write_crop(EXAMPLES / f"levir_test_1_{date}.tif", root / f"{date}.tif", 0, 768)
    alignment = plan_grid(str(root / "A.tif"), str(root / "B.tif"))
    inp = str(root / "in.zarr")
    helpers.ingest_pair(alignment, inp, tile=128)
    return alignment, inp, root


@pytest.mark.slow
def test_pool_with_scene_statistics_reproduces_one_pass_over_the_scene(levir_crop_stores, ray_local):
    """Through Ray actors: 17 measuring passes, clipped windows, then tiles equal to the one-pass map."""
    alignment, inp, root = levir_crop_stores
    weights = models.resolve_weights("tinycd", "levir")
    out = str(root / "scene.zarr")
    store.create_output_store(out, alignment.grid, 128)
    pool = PredictorPool("tinycd", weights, workers=2, batch_size=2)
    levels = []
    tiles = make_tiles(alignment.grid.height, alignment.grid.width, 128)
    job = InferenceJob(inp, out, 96, (1, 2, 3), statistics="scene")
    try:
        stats, passes = fit.measure_statistics(pool, job, tiles, on_level=lambda k, n: levels.append((k, n)))
    finally:
        pool.close()
    assert passes == 17 and levels == [(k, 17) for k in range(1, 18)]
    predictor = TilePredictor("tinycd", weights, batch_size=2, threads=1)
    helpers.predict_stores(predictor, replace(job, scene_stats=stats), tiles)
    tiled = store.open_array(out, store.PROBABILITY)[:]
    net, meta, _ = loader.build("tinycd", "levir")
    whole = predict_image(net.eval(), normalize(store.open_array(inp, store.IMAGE)[:], meta))
    np.testing.assert_allclose(tiled, whole, atol=1e-4)
    assert (whole > meta.threshold).mean() > 0.05  # real buildings in the crop


def test_scene_statistics_count_only_valid_pixels(stores):
    """The synthetic scene's nodata stripe is left out of the statistics; the divisor padding is in."""
    alignment, inp, out = stores
    predictor = TilePredictor("tinycd", models.resolve_weights("tinycd", "levir"), batch_size=3, threads=1)
    job = InferenceJob(inp, out, 16, (1, 2, 3), statistics="scene")
    level = predictor.statistics_levels()[0]
    moments = predictor.measure(job, make_tiles(alignment.grid.height, alignment.grid.width, 64), level, {})
    valid = store.open_array(inp, store.VALID)[:]
    assert 0 < valid.mean() < 1
    padded = np.pad(valid, ((0, -valid.shape[0] % 8), (0, -valid.shape[1] % 8)), mode="reflect")
    first_mix = moments["_first_mix._mixing._convmix.2#0"]  # a full-resolution layer: one weight per pixel
    assert first_mix.n == pytest.approx(padded.sum())
    gate = moments["_backbone.1.0.block.1.pool#0"]  # half resolution: a quarter of the weight
    assert gate.n == pytest.approx(padded.sum() / 4)


def test_the_store_says_its_tile_and_bands_and_they_are_checked(stores):
    _, inp, _ = stores
    image = store.open_array(inp, store.IMAGE)
    assert store.check_layout(inp, image, (1, 2, 3)) == 64
    with pytest.raises(ValueError, match="holds 3 bands, not bands \\(1, 2, 5\\)"):
        store.check_layout(inp, image, (1, 2, 5))
