"""The paced stream (``python -m benchmarks.schedule``): the stream's scheduler on a claimed node."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from benchmarks import schedule as pacing
from pipeline.engine import stream
from pipeline.tiling import make_tiles
from tests.conftest import REPO


def test_concurrency_counts_spans_running_at_once():
    mean, peak = pacing._concurrency([(0.0, 1.0), (0.5, 1.5), (2.0, 3.0)], 0.0, 4.0)
    assert peak == 2 and mean == pytest.approx(3.0 / 4.0)
    assert pacing._concurrency([], 0.0, 1.0) == (0.0, 0)


@pytest.mark.slow
def test_decodes_ahead_run_while_the_model_is_busy(tmp_path):
    """A decode that finishes lets the next one start at once, not when a batch comes back.

    A 4096 x 1536 scene of 256-pixel tiles on a claimed 16-CPU node with one GPU: batches of 16
    (a tile row, two segments), 4 batches looked ahead (2 per slot: the segments of rows 0-4, 10),
    at most 8 decodes running ahead. Each pass takes 0.6 s, each decode 0.1 s: the 9th and 10th segments
    must be decoded while the first pass runs. The stream's loop used to wait for a batch to come
    back before submitting them, so the GPU found its next batch's segments still decoding.
    """
    env = {**os.environ, "PREFECT_LOGGING_LEVEL": "WARNING"}
    cmd = [sys.executable, "-m", "benchmarks.schedule", "--size", "4096", "--height", "1536", "--tile", "256",
           "--halo", "32", "--node", "16:1", "--runs", "1", "--json", "--decode-mpps", "5.24",
           "--model-mpps", "1.75", "--host-ms", "0", "--store-mpps", "1000", "--writer-mpps", "1000",
           "--decodes-per-lane", "8", "--lookahead-batches", "2"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("{")))
    tiles = make_tiles(1536, 4096, 256)
    assert len(r["spans"]["decode"]) == len(stream.make_segments(tiles, 256)) == 12  # each segment decoded once
    assert len(r["spans"]["forward"]) == 6  # a pass per tile row
    first_pass_end = min(e for _, e in r["spans"]["forward"])
    decoded = sorted(e for _, e in r["spans"]["decode"])
    assert decoded[9] < first_pass_end, (decoded, r["spans"]["forward"])  # rows 0-4 while the first pass runs
    # The model is the bound here: its lane was busy most of the stream, whose time is at least the passes'.
    assert r["seconds"] >= r["model_bound"] * 0.99 and r["bound"] == r["model_bound"]
    assert r["lanes_busy"] > 0.5 and r["decode_peak"] <= 12


def test_the_paced_stream_refuses_a_runtime_it_did_not_start(ray_local):
    """Its claimed CPUs and GPUs apply only to a runtime it starts."""
    with pytest.raises(RuntimeError, match="runtime of its own"):
        pacing.run_schedule(512, pacing.Pace(), cpus=4, gpus=1)
