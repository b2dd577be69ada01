"""The tile stream: maps equal to the stores path, lost actors cost only their batches, killed runs resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio

from pipeline import checks
from pipeline.config import MapSpec, RunOptions
from pipeline.engine import stream, workdir
from pipeline.engine.predictor import InferenceJob, TilePredictor
from pipeline.engine.scheduler import TUNING
from pipeline.io import store
from pipeline.tiling import assemble, chunks_under, halo_window, make_tiles
from tests import helpers

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "examples"


def test_assemble_cuts_a_window_from_its_chunks():
    scene = np.arange(2 * 10 * 11).reshape(2, 10, 11)
    tiles = make_tiles(10, 11, 4)
    pieces = {(t.row, t.col): scene[:, t.y0:t.y0 + t.height, t.x0:t.x0 + t.width] for t in tiles}
    w = halo_window(tiles[4], 2, 8, 10, 11)  # an inner tile's window, clipped by the scene
    assert chunks_under(w, 4) == [(r, c) for r in range(3) for c in range(3)]
    np.testing.assert_array_equal(assemble(w, 4, pieces), scene[:, w.y0:w.y1, w.x0:w.x1])


def test_row_segments_group_chunks_of_one_row():
    tiles = make_tiles(600, 1100, 256)  # 3 rows of 5 chunks (the last ones smaller)
    segments = stream.make_segments(tiles, 256)  # 2048 // 256 = 8 chunks per segment: whole rows here
    assert list(segments) == [(0, 0), (1, 0), (2, 0)]
    assert [t.col for t in segments[(1, 0)]] == [0, 1, 2, 3, 4]
    wide = make_tiles(600, 1100, 4096)  # tiles wider than a segment: one chunk each
    assert list(stream.make_segments(wide, 4096)) == [(t.row, t.col) for t in wide]
    assert len(stream.make_segments(make_tiles(600, 5000, 1024), 1024)) == 3  # 5 chunks, 2 per segment
    assert stream.segment_of((2, 11), 256) == (2, 8) and stream.segment_of((2, 7), 256) == (2, 0)


def _walk(rows: int, width_tiles: int, hold: int | None, held: int | None = None) -> tuple[stream._Segments, int, list]:
    """The segments of a scene of 64-pixel tiles streamed in order as :func:`stream.run_stream` does.

    Batches of 4 tiles, decoding the next 4 batches ahead; returns (segments, peak held, submits).
    """
    submits = []

    class FakeDecode:
        def remote(self, job, tiles, done):
            submits.append((tuple(t.key for t in tiles), done))
            return object()

    height, width = rows * 64, width_tiles * 64
    tiles = make_tiles(height, width, 64)
    # 2 chunks of 64 per segment
    needs = {t: sorted({stream.segment_of(k, 64, 128) for k in chunks_under(halo_window(t, 16, 96, height, width), 64)})
             for t in tiles}
    batches = [tiles[i:i + 4] for i in range(0, len(tiles), 4)]
    segments = stream._Segments(None, set(), stream.make_segments(tiles, 64, 128), batches, needs, hold=hold,
                                decode=FakeDecode(), held=held)
    ahead, peak, between = 4, 0, []
    for i, batch in enumerate(batches):
        for key in stream.batch_segments(batch, needs):  # the batch being sent: whatever the bounds
            segments.need(key)
        segments.ahead(k for later in batches[i + 1:i + ahead] for k in stream.batch_segments(later, needs))
        peak = max(peak, len(segments.refs))
        for key in stream.batch_segments(batch, needs):
            segments.release(key, i)
        between.append(len(segments.refs))
    segments.between = max(between)  # held between batches: lookahead and segments kept for later
    assert segments.refs == {}  # everything released at the end
    return segments, peak, submits


def test_a_local_object_store_has_room_for_the_scenes_row_segments(monkeypatch):
    """RGB uint8 keeps the default; a 13-band uint16 scene gets room for its segments, within 30 % of RAM."""
    def machine(gib):
        monkeypatch.setattr(stream.os, "sysconf", lambda name: {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": gib * 2**18}[name])

    machine(64)
    assert stream.object_store_bytes(3, 1, 512) == 512 * 2**20
    segment = 512 * 512 * (2 * 13 * 2 + 1)  # both dates' 13 uint16 bands and the valid mask: one chunk a segment
    assert stream.object_store_bytes(13, 2, 512) == TUNING.store_segments * segment
    assert stream.object_store_bytes(13, 2, 1024) == TUNING.store_segments * 1024 * 1024 * 53  # one chunk of 1024
    assert stream.object_store_bytes(13, 2, 4096) == int(0.3 * 64 * 2**30)  # one chunk of 4096²: 30 % of RAM
    machine(4)
    assert stream.object_store_bytes(13, 2, 1024) == int(0.3 * 4 * 2**30)
    machine(1)
    assert stream.object_store_bytes(13, 2, 512) == 512 * 2**20  # never below the default


def test_decoded_segments_are_released_once_no_batch_needs_them():
    """The stream holds a few rows of decoded segments, however many rows the scene has.

    Segments are counted per batch and released per batch; counting them per tile kept every
    decoded segment in Ray's object store until the end of the scene (it spilled to disk).
    """
    segments, peak, submits = _walk(16, 16, None)  # 16 rows of 8 segments
    assert len(submits) == 16 * 8  # each segment decoded once
    assert peak <= 4 * 8  # the rows above, at and below the tiles in flight, and the next (of 16 rows)
    assert segments.decoded == 16 * 16 and segments.reused == 0


def test_the_segments_held_do_not_grow_with_the_scene_width():
    """A segment whose next batch is beyond the horizon is let go and read back from input.zarr for it.

    Without a horizon the stream holds about three rows of segments, as many as the scene is wide.
    """
    peaks, unbounded = {}, {}
    for width_tiles in (64, 128):  # 16 and 32 batches a row: uses of a segment beyond the horizon of 8
        _, unbounded[width_tiles], _ = _walk(6, width_tiles, None)
        segments, peaks[width_tiles], submits = _walk(6, width_tiles, 8)
        # Every chunk is decoded from the source once; a later use reads its segment back (all chunks done).
        first = [keys for keys, done in submits if not done]
        tiles = make_tiles(6 * 64, width_tiles * 64, 64)
        assert sorted(k for keys in first for k in keys) == sorted(t.key for t in tiles)
        again = [keys for keys, done in submits if done]
        assert again and all(set(keys) <= done for keys, done in submits if done)
        assert segments.decoded == len(tiles) and segments.reread == sum(len(k) for k in again)
    assert unbounded[128] > 1.8 * unbounded[64] and unbounded[64] > 2 * 32  # over two rows of 32 segments
    assert peaks[128] == peaks[64] < unbounded[64] / 2


def test_the_segments_held_are_bounded_in_bytes():
    """A many-band scene's segments are big: the stream holds at most ``held`` of them, reading the rest back.

    Unbounded, a 13-band uint16 tile of 10980 px held some 19 segments of 54 MiB (1 GiB of object store).
    """
    free, free_peak, _ = _walk(8, 16, 8)
    segments, peak, submits = _walk(8, 16, 8, held=6)
    assert free.between > 2 * 6 and segments.between <= 6  # a batch being sent adds what it needs, whatever the bound
    assert free_peak > peak
    first = [keys for keys, done in submits if not done]
    assert sorted(k for keys in first for k in keys) == sorted(t.key for t in make_tiles(8 * 64, 16 * 64, 64))
    assert segments.reread > 0 and segments.decoded == 8 * 16  # each chunk decoded once, some read back


def test_segments_of_many_bands_are_narrower():
    """RGB uint8 keeps 2048-px segments (4 chunks of 512); 13 uint16 bands get one chunk; 6 get three."""
    assert stream.segment_width_for(3, 1, 512) == 2048
    assert stream.segment_width_for(13, 2, 512) == 512
    assert stream.segment_width_for(6, 2, 512) == 1536
    assert stream.segment_width_for(13, 2, 4096) == 4096  # one chunk at least
    assert stream.segment_width_for(3, 1, 256) == 2048


def test_a_segment_is_as_big_as_the_bands_the_model_reads():
    job = SimpleNamespace(alignment=SimpleNamespace(dtype="uint16"), tile=512, segment_width=2048, bands=tuple(range(13)))
    assert stream.segment_bytes(job) == 512 * 2048 * (2 * 13 * 2 + 1)
    job.bands = (1, 2, 3)
    job.tile = 4096
    assert stream.segment_bytes(job) == 4096 * 4096 * (2 * 3 * 2 + 1)  # one chunk wider than a segment


def test_a_scene_within_the_horizon_reads_nothing_back():
    segments, _, submits = _walk(6, 8, 8)  # 2 batches per row: uses 2 batches apart
    assert segments.reread == 0 and all(not done for _, done in submits) and len(submits) == 6 * 4


def test_decodes_ahead_of_need_are_bounded(ray_local, tmp_path):
    """At most ``limit`` decode tasks run ahead of need; a batch being sent still gets its segments.

    Ray starts a worker process for each stream task running at once: on a node of many CPUs the
    lookahead alone had some 20 decode tasks running for one GPU actor.
    """
    import ray

    gate = tmp_path / "gate"

    @ray.remote(num_cpus=0)
    def held_decode(job, tiles, done):
        while not gate.exists():
            time.sleep(0.02)
        return len(tiles)

    tiles = make_tiles(4 * 64, 4 * 64, 64)
    # 2 chunks of 64 per segment: 2 segments a row
    needs = {t: sorted({stream.segment_of(k, 64, 128) for k in chunks_under(halo_window(t, 16, 96, 256, 256), 64)})
             for t in tiles}
    batches = [tiles[i:i + 4] for i in range(0, len(tiles), 4)]  # a row each
    segments = stream._Segments(None, set(), stream.make_segments(tiles, 64, 128), batches, needs, limit=3,
                                decode=held_decode)
    wanted = [k for b in batches for k in stream.batch_segments(b, needs)]
    assert not segments.ahead(wanted)  # three running: the fourth waits
    assert list(segments.refs) == [(0, 0), (0, 2), (1, 0)]  # in the order asked for
    segments.need((3, 2))  # a batch being sent: submitted whatever the limit
    assert len(segments.refs) == 4 and not segments.ahead(wanted)
    gate.touch()
    ray.get(list(segments.refs.values()))
    assert not segments.ahead(wanted) and len(segments.refs) == 7  # finished ones no longer count
    ray.get(list(segments.refs.values()))
    assert segments.ahead(wanted) and len(segments.refs) == 8
    unbounded = stream._Segments(None, set(), stream.make_segments(tiles, 64, 128), batches, needs, decode=held_decode)
    gate.unlink()
    assert unbounded.ahead(wanted) and len(unbounded.refs) == 8 and unbounded.running == []
    gate.touch()
    ray.get(list(unbounded.refs.values()))


def _read(path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def _stores_map(pre, tmp_path) -> np.ndarray:
    """The map made the old way: ingest to zarr, predict from zarr windows, export from the stores."""
    inp, out = str(tmp_path / "ref-in.zarr"), str(tmp_path / "ref-out.zarr")
    helpers.ingest_pair(pre.alignment, inp, pre.spec.tile)
    store.create_output_store(out, pre.alignment.grid, pre.spec.tile)
    predictor = TilePredictor(pre.meta.model, pre.loaded, batch_size=2, threads=1)
    helpers.predict_stores(predictor, InferenceJob(inp, out, pre.spec.halo, pre.bands),
                           make_tiles(pre.alignment.grid.height, pre.alignment.grid.width, pre.spec.tile))
    dest = tmp_path / "ref.tif"
    helpers.export_map(out, inp, str(dest), probability="float32")
    return _read(dest)


@pytest.mark.slow
def test_stream_map_equals_the_stores_path_and_survives_a_lost_actor(synthetic, tmp_path, ray_local):
    spec = MapSpec(before=str(synthetic["before"]), after=str(synthetic["after"]), tile=64, halo=16,
                   probability="float32")
    run = RunOptions(output=str(tmp_path / "stream.tif"), workdir=str(tmp_path / "work"), batch_size=2)
    pre = checks.preflight(spec, run)
    reference = _stores_map(pre, tmp_path)
    # The model actor dies on its second batch (once); its batches go to a replacement.
    made = helpers.make_map(spec, run, predictor=helpers.dies_once(1, tmp_path / "killed-once"))
    assert (tmp_path / "killed-once").exists()
    s = made.stream
    assert s.tiles == 20 and s.reused == 0 and s.chunks_decoded == 20
    # Only what the lost actor held is redone: its two slots (two lanes on 2 CPUs, no batch waiting) of 2 tiles.
    assert 1 <= len(s.retried) <= 4 and s.predicted == 20 + 0 and len(set(s.retried)) == len(s.retried)
    stream_map = _read(run.output)
    assert np.array_equal(np.isnan(stream_map), np.isnan(reference))
    np.testing.assert_allclose(stream_map, reference, atol=1e-6, equal_nan=True)
    stats = made.sinks[0].result()
    assert stats["pixels"]["valid"] == int((~np.isnan(reference)).sum())


def test_a_worker_opens_a_scenes_stores_once_and_writes_every_chunk(synthetic, tmp_path, ray_local, monkeypatch):
    """Decode tasks in one worker, and the map writer's keeper, keep the scene's arrays open between segments and batches."""
    from pipeline.io.read import AlignedPairReader

    alignment = checks.plan_grid(str(synthetic["before"]), str(synthetic["after"]))
    job = stream.SceneStream(alignment, str(tmp_path / "input.zarr"), str(tmp_path / "output.zarr"), str(tmp_path),
                             64, (1, 2, 3))
    store.create_input_store(job.input_store, alignment.grid, 3, alignment.dtype, 64)
    store.create_output_store(job.output_store, alignment.grid, 64)
    opened, writable = [], store.writable
    monkeypatch.setattr(store, "writable", lambda path, name: opened.append(name) or writable(path, name))
    stream._input_writer.cache_clear()
    tiles = make_tiles(230, 300, 64)
    for segment in stream.make_segments(tiles, 64).values():
        stream.decode_segment(job, segment, frozenset())
    results = [(t, np.full((t.height, t.width), t.row + t.col / 10, "float32"), None) for t in tiles]
    keep = stream.TileKeeper(job)
    for i in range(0, len(results), 4):
        keep(results[i:i + 4])
    assert sorted(opened) == ["image", "probability", "valid"]  # once each, for 5 segments and 5 batches
    with AlignedPairReader(alignment) as reader:
        expected_image, expected_valid = reader.read(0, 230, 0, 300)
    image, valid = store.read_input_chunk(job.input_store, 0, 0, 230, 300)
    np.testing.assert_array_equal(image, expected_image)
    np.testing.assert_array_equal(valid, expected_valid)
    probability = store.open_array(job.output_store, store.PROBABILITY)[:]
    for t, expected, _ in results:
        np.testing.assert_array_equal(probability[t.y0:t.y0 + t.height, t.x0:t.x0 + t.width], expected)
    assert workdir.Records(str(tmp_path)).done("ingest") == {t.key for t in tiles}
    assert workdir.Records(str(tmp_path)).done("infer") == {t.key for t in tiles}


@pytest.mark.slow
def test_segments_read_back_from_input_zarr_make_the_same_map(synthetic, tmp_path, ray_local, monkeypatch):
    """With no horizon every later use of a segment is read back from input.zarr: the map is the same."""
    from dataclasses import replace

    spec = MapSpec(before=str(synthetic["before"]), after=str(synthetic["after"]), tile=64, halo=16,
                   probability="float32")
    maps, made, default = {}, {}, TUNING.hold_factor
    run_stream = stream.run_stream
    for hold in (default, 0):
        monkeypatch.setattr(stream, "run_stream",
                            lambda *a, hold=hold, **k: run_stream(*a, **k, tuning=replace(TUNING, hold_factor=hold)))
        run = RunOptions(output=str(tmp_path / f"hold{hold}.tif"), workdir=str(tmp_path / f"work{hold}"), batch_size=2)
        made[hold] = helpers.make_map(spec, run).stream
        maps[hold] = _read(run.output)
    assert made[default].chunks_reread == 0
    seconds = made[default].model_seconds  # the actors' phases while this scene ran
    # and no ``warm-up``: CPU actors are not warmed (a pass there is seconds of real work)
    assert set(seconds) == {"windows", "lane wait", "to device", "forward", "results"} and seconds["forward"] > 0
    s = made[0]
    assert s.chunks_decoded == s.tiles == 20 and s.chunks_reread > 0  # each chunk decoded once, then read back
    np.testing.assert_array_equal(maps[0], maps[default])


def _cli(args, env, log: Path, timeout=900, kill_at: tuple[Path, int] | None = None):
    """``changemap`` in its own process group (a killed run's Ray processes go with it).

    ``kill_at=(folder, n)``: the whole group is killed with SIGKILL from outside, as a preempted node
    would be, once ``n`` completion records exist under ``folder``. Output goes to files, not
    pipes: the Ray processes of a killed run would hold pipes open.
    """
    with open(log.with_suffix(".out"), "w") as out, open(log.with_suffix(".err"), "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], cwd=REPO, env=env, stdout=out,
                                stderr=err, start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            while proc.poll() is None and time.monotonic() < deadline:
                if kill_at and len(list(kill_at[0].glob("changemap-*/records/infer/*"))) >= kill_at[1]:
                    os.killpg(proc.pid, signal.SIGKILL)
                time.sleep(0.05)
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # whatever the run left (a killed driver's Ray node)
            except ProcessLookupError:
                pass
    return proc.returncode, log.with_suffix(".out").read_text(), log.with_suffix(".err").read_text()


def _summary(out: str) -> dict:
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


def test_work_folders_are_found_again_by_the_map_not_by_how_it_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("CHANGEMAP_CACHE", str(tmp_path / "cache"))
    spec = MapSpec(before="b.tif", after="a.tif", tile=256)
    cached = workdir.paths_for(spec, RunOptions(output="o.tif", batch_size=2))
    assert cached.run_dir.startswith(str(tmp_path / "cache" / "work")) and cached.default_place
    assert workdir.paths_for(spec, RunOptions(output="other.tif", workers=3)).run_dir == cached.run_dir
    given = workdir.paths_for(spec, RunOptions(output="o.tif", workdir=str(tmp_path / "w")))
    assert given.run_dir == str(tmp_path / "w" / f"changemap-{spec.key()}") and not given.default_place
    assert workdir.paths_for(MapSpec(before="b.tif", after="a.tif"), RunOptions()).run_dir != cached.run_dir
    records = workdir.Records(given.run_dir)
    records.mark("infer", "r0c1", "node-a")
    assert records.done("infer") == {"r0c1"} and records.done("ingest") == set()
    assert records.note("infer", "r0c1") == "node-a"


@pytest.mark.slow
@pytest.mark.parametrize("with_workdir", [False])  # --workdir only moves the folder (test above)
def test_a_killed_run_resumes_where_it_stopped(tmp_path, with_workdir, ray_local, prefect_api_env):
    env = {**prefect_api_env, "PREFECT_HOME": str(tmp_path / "prefect"), "CHANGEMAP_CACHE": str(tmp_path / "cache")}
    pair = [str(EXAMPLES / "levir_test_1_A.tif"), str(EXAMPLES / "levir_test_1_B.tif")]
    opts = ["--tile", "256", "--halo", "32", "--probability", "float32", "--batch-size", "2", "--json"]
    if with_workdir:
        opts += ["--workdir", str(tmp_path / "work")]
    # The uninterrupted map, made in this process (same map settings and batch size).
    whole = RunOptions(output=str(tmp_path / "whole.tif"), batch_size=2, workdir=str(tmp_path / "ref"))
    helpers.make_map(MapSpec(before=pair[0], after=pair[1], tile=256, halo=32, probability="float32"), whole)
    # Killed (SIGKILL, from outside) once 8 of its 16 tiles are recorded, like a preempted node.
    killed = tmp_path / "resumed.tif"
    work_root = tmp_path / "work" if with_workdir else tmp_path / "cache" / "work"
    code, out, err = _cli(["run", *pair, "-o", str(killed), *opts], env, tmp_path / "killed", kill_at=(work_root, 8))
    assert code == -signal.SIGKILL and not killed.exists()
    assert len(list(work_root.glob("changemap-*/records/infer/*"))) >= 8
    # The identical command continues: only unfinished tiles are predicted, no recorded chunk is decoded again.
    code, out, err = _cli(["run", *pair, "-o", str(killed), *opts], env, tmp_path / "resumed")
    assert code == 0, err[-3000:]
    s = _summary(out)
    assert s["tiles_reused"] >= 8 and s["tiles_predicted"] == 16 - s["tiles_reused"]
    assert s["chunks_reused"] >= 8 and s["chunks_decoded"] + s["chunks_reused"] <= 16
    assert "resumed:" in out
    np.testing.assert_allclose(_read(killed), _read(tmp_path / "whole.tif"), atol=1e-6)
    assert not list(work_root.glob("changemap-*"))  # removed after success


def test_warm_workers_cover_the_tasks_the_stream_runs_at_once(ray_local):
    """As many warm-up tasks as the stream runs tasks at once, within the free CPUs, held together.

    A worker the stream starts itself leaves its decodes waiting for process start and imports.
    Each task holds its worker a moment so that the others start processes of their own rather
    than queue for it (best effort: a process slower to start than the hold is not waited for).
    """
    import ray

    free = int(ray.available_resources()["CPU"] / TUNING.task_cpus)
    refs = stream.warm_workers(lanes=1)
    assert len(refs) == min(stream.stream_workers(1), free) == free  # 2 CPUs here: fewer than the stream's 20
    assert len(set(ray.get(refs))) >= 2  # several processes, not one worker reused four times
    assert stream.stream_workers(2) == 2 * TUNING.decodes_per_lane + 4


def test_the_held_segments_fit_the_device_and_half_the_store(monkeypatch):
    """A CPU actor's stream looks ahead within held_bytes, a GPU's within held_bytes_gpu; never over half the store."""
    resources = {"CPU": 16, "object_store_memory": 8 * 2**30}
    monkeypatch.setattr(stream.ray, "cluster_resources", lambda: resources)
    assert stream.held_budget() == TUNING.held_bytes
    resources["GPU"] = 1
    assert stream.held_budget() == TUNING.held_bytes_gpu > TUNING.held_bytes
    resources["object_store_memory"] = 512 * 2**20
    assert stream.held_budget() == 256 * 2**20
    monkeypatch.setattr(stream.os, "sysconf", lambda name: {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 64 * 2**18}[name])
    assert stream.object_store_bytes(3, 1, 512, gpus=1) == 2 * TUNING.held_bytes_gpu  # room for a GPU's lookahead
    assert stream.object_store_bytes(3, 1, 512) == 512 * 2**20
