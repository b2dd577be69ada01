"""The throughput benchmark's parts: the null model, stage times add up, the model rate runs, simulated nodes."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import nullmodel, throughput
from benchmarks.common import parse_node
from tests.conftest import REPO


def test_the_null_model_decides_on_a_grid_of_cells_from_the_raw_pixels():
    """Change where the dates' mean brightness differs by more than its threshold, one value per 16-px cell."""
    from pipeline import loader

    nullmodel.register()
    net, _, _ = loader.build(nullmodel.NULL_MODEL, "none")
    assert net.takes_raw and net.size_divisor == nullmodel.CELL
    x = torch.zeros(1, 2, 3, 64, 96, dtype=torch.uint8)
    x[0, 1, :, 16:32, 32:64] = 200  # two cells of the after date brighter by 200
    with torch.inference_mode():
        p = net.change_probability(net(x))[0]
    assert p.shape == (64, 96)
    assert (p[16:32, 32:64] > 0.99).all() and (p[:16] < 0.01).all() and (p[32:] < 0.01).all()
    assert len(torch.unique(p[16:32, 32:64])) == 1  # one value over each cell


def test_stage_busy_sums_each_stage_of_a_ray_timeline(tmp_path):
    events = [{"name": "pipeline.engine.stream.decode_segment", "ph": "X", "dur": 1_500_000},
              {"name": "pipeline.engine.stream.decode_segment", "ph": "X", "dur": 500_000},
              {"name": "predict_chunks", "ph": "X", "dur": 3_000_000},
              {"name": "submit_task", "ph": "X", "dur": 9_000_000},  # not a stage
              {"name": "MapWriter.put", "ph": "i", "dur": 7_000_000}]  # not a duration event
    trace = tmp_path / "timeline.json"
    trace.write_text(json.dumps(events))
    assert throughput.stage_busy(trace) == {"decode+ingest": 2.0, "model (summed over lanes)": 3.0}


def test_stream_workers_counts_the_processes_that_ran_stream_tasks(tmp_path):
    def event(name, worker, ph="X"):
        return {"name": name, "ph": ph, "dur": 1000, "pid": "127.0.0.1", "tid": f"worker:{worker}"}

    events = [event("pipeline.engine.stream.decode_segment", "a"), event("pipeline.engine.stream.decode_segment", "a"),
              event("pipeline.engine.stream.decode_segment", "b"), event("pipeline.engine.stream.load_tiles", "c"),
              event("predict_chunks", "d"),  # the model actor: not a stream worker
              event("pipeline.engine.stream.decode_segment", "e", ph="i")]  # not a duration event
    trace = tmp_path / "timeline.json"
    trace.write_text(json.dumps(events))
    assert throughput.stream_workers(trace) == 3


def test_the_model_rate_runs_one_pass_per_lane():
    rate = throughput.model_rate(nullmodel.NULL_MODEL, tile=32, halo=0, batch=1, device="cpu", repeats=1)
    assert rate > 0


def test_gpu_samples_are_summarised_per_gpu():
    text = ("0, 35, 1200\n1, 0, 10\n0, 95, 5400\n"
            "index, utilization.gpu [%], memory.used [MiB]\n0, [N/A], [N/A]\n")
    found = throughput.parse_gpu_samples(text)
    assert found == {0: {"mean": 65.0, "max": 95.0, "memory": 5400.0, "active": 65.0, "samples": 2},
                     1: {"mean": 0.0, "max": 0.0, "memory": 10.0, "active": 0.0, "samples": 1}}


def test_gpu_utilisation_while_active_leaves_out_the_idle_start_and_end():
    """A run's start-up and end leave its GPU idle: ``active`` averages from the first to the last busy sample."""
    found = throughput.parse_gpu_samples("0, 0, 10\n0, 0, 10\n0, 50, 900\n0, 0, 900\n0, 70, 900\n0, 0, 10\n")[0]
    assert found["mean"] == 20.0 and found["active"] == 40.0 and found["max"] == 70.0


def test_the_gpu_sampler_says_nothing_without_nvidia_smi(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with throughput.GpuSampler() as gpu:
        pass
    assert gpu.summary is None


def test_the_gpu_sampler_reads_nvidia_smi_while_the_block_runs(tmp_path, monkeypatch):
    """A stand-in ``nvidia-smi`` that prints a sample every 50 ms, as ``-lms 50`` does, until stopped."""
    import time

    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\nwhile true; do echo '0, 40, 2048'; echo '0, 60, 4096'; sleep 0.05; done\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with throughput.GpuSampler(period_ms=50) as gpu:
        time.sleep(0.5)
    assert gpu.summary is not None and set(gpu.summary) == {0}
    g = gpu.summary[0]
    assert g["samples"] >= 2 and g["max"] == 60.0 and g["memory"] == 4096.0 and 40.0 <= g["mean"] <= 60.0


def test_batch_sizes_to_compare_are_one_option():
    import argparse

    parser = argparse.ArgumentParser()
    throughput.add_arguments(parser)
    assert parser.parse_args(["--batches", "4,8,16"]).batches == [4, 8, 16]
    assert parser.parse_args([]).batches == []


def test_several_models_each_get_their_model_rate_whole_run_and_marginal_rate(tmp_path, monkeypatch, capsys):
    """``--model a,b --skip-data-path --whole-marginal``: per model, its rate alone, its whole runs at both sizes
    and the marginal rate between them against the model alone; no null-model run."""
    import argparse

    runs = []

    def fake_run(pair, out, model, args, work, timeline=True, memory=False):
        size = int(pair[0].stem.split("_")[1])
        runs.append((model, size))
        seconds = {"a": {64: 2.0, 128: 3.0}, "b": {64: 4.0, 128: 8.0}}[model][size]
        return {"summary": {"seconds": seconds}, "wall": seconds + 1, "pss": 0, "rss": 0, "busy": {}}

    monkeypatch.setattr(throughput, "_run", fake_run)
    monkeypatch.setattr(throughput, "decode_rate", lambda *a, **k: 100.0)
    monkeypatch.setattr(throughput, "model_rate", lambda model, *a, **k: {"a": 0.05, "b": 0.02}[model])
    monkeypatch.setattr("benchmarks.common.make_mosaic", lambda path, *a, **k: Path(path).touch())
    parser = argparse.ArgumentParser()
    throughput.add_arguments(parser)
    args = parser.parse_args(["--size", "128", "--marginal", "64", "--model", "a,b", "--skip-data-path",
                              "--whole-marginal", "--workdir", str(tmp_path), "--device", "cpu"])
    throughput.throughput(args)
    out = capsys.readouterr().out
    assert runs == [("a", 128), ("a", 64), ("b", 128), ("b", 64)]  # no null-model or fixed-cost runs
    assert "model alone (a, forward passes): 0.050 MP/s" in out and "model alone (b, forward passes): 0.020 MP/s" in out
    # a: (128² - 64²) px in 1 s = 0.012288 MP/s, 0.246 x its 0.05 MP/s alone; b: the same pixels in 4 s
    assert "whole run (a), marginal rate 64² -> 128²: 0.012 MP/s = 0.246 x model alone" in out
    assert "whole run (b), marginal rate 64² -> 128²: 0.003 MP/s = 0.154 x model alone" in out
    assert "whole run (b), 128²: 8.0 s in the flow = 0.002 MP/s" in out
    assert f"work folder (mosaics, each run's summary and timeline): {tmp_path}" in out



def test_a_wide_mosaic_has_the_height_and_width_asked_for(tmp_path):
    """``--wide W`` measures a 2048 x W pair: the mosaic is size rows by ``width`` columns of the source's pixels."""
    import numpy as np
    import rasterio

    from benchmarks.common import make_mosaic

    source = REPO / "examples" / "levir_test_1_A.tif"
    out = tmp_path / "wide.tif"
    make_mosaic(out, 256, [str(source)], block=128, width=640)
    with rasterio.open(out) as dst, rasterio.open(source) as src:
        assert (dst.count, dst.height, dst.width) == (3, 256, 640)
        block, whole = dst.read(window=((0, 128), (512, 640))), src.read()
        assert any(np.array_equal(block, np.rot90(whole, k, axes=(1, 2))[:, :128, :128]) for k in range(4))
    parser = __import__("argparse").ArgumentParser()
    throughput.add_arguments(parser)
    assert parser.parse_args(["--wide", "65536"]).wide == 65536


def test_each_run_leaves_its_summary_in_the_work_folder(tmp_path, monkeypatch):
    """A lent machine's figures can be read later: each run's summary (with its process wall) is kept."""
    import argparse

    import benchmarks.common

    def fake_run(cmd, env=None):
        assert cmd[cmd.index("--model") + 1] == "tinycd" and "--batch-size" not in cmd  # the run's own default
        return 0, 3.0, {"driver": 1.5}, 'progress\n{"seconds": 2.5, "model_seconds": {"forward": 1.0}}\n'

    monkeypatch.setattr(benchmarks.common, "run_with_cpu", fake_run)
    args = argparse.Namespace(tile=512, halo=64, batch=None)
    pair = (tmp_path / "before_256.tif", tmp_path / "after_256.tif")
    result = throughput._run(pair, tmp_path / "whole_256.tif", "tinycd", args, tmp_path, timeline=False)
    kept = json.loads((tmp_path / "summary-whole_256-tinycd.json").read_text())
    assert result["summary"]["seconds"] == kept["seconds"] == 2.5 and kept["model_seconds"] == {"forward": 1.0}
    assert kept["process_wall"] == result["wall"] == 3.0 and result["cpu"] == {"driver": 1.5}


@pytest.mark.slow
def test_a_simulated_node_places_gpu_actors_that_run_on_the_cpu(tmp_path, prefect_api_env):
    """``--simulate-node 8:1``: the pool places its actor as on a GPU node (a GPU's batch and warm-up), on the CPU."""
    cmd = [sys.executable, "-m", "benchmarks.run_scene", "--null", "--simulate-node", "8:1", "--",
           str(REPO / "examples" / "levir_test_1_A.tif"), str(REPO / "examples" / "levir_test_1_B.tif"),
           "-o", str(tmp_path / "map.tif"), "--model", nullmodel.NULL_MODEL, "--weights", "none",
           "--workdir", str(tmp_path / "work")]
    done = subprocess.run(cmd, env=prefect_api_env, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = next(json.loads(line) for line in done.stdout.splitlines() if line.startswith("{"))
    assert summary["device"] == "cuda" and summary["workers"] == 1 and summary["tiles_predicted"] == 4
    assert summary["model_seconds"]["warm-up"] > 0  # a GPU pool's warm-up pass, run on the CPU actor


def test_a_simulated_node_is_given_as_cpus_and_gpus():
    assert parse_node("16:1") == (16, 1)
    for bad in ("16", "a:1", "0:1", "4:-1"):
        with pytest.raises(argparse.ArgumentTypeError, match="--simulate-node"):
            parse_node(bad)
