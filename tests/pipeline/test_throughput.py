"""The throughput benchmark's parts: the null model is a 1x1 convolution, stage times add up, the model rate runs."""
from __future__ import annotations

import json

import torch

from pipeline import throughput


def test_the_null_model_is_a_one_by_one_convolution_over_both_dates():
    from pipeline import loader

    net, _, _ = loader.build(throughput.NULL_MODEL, "none")
    x = torch.randn(2, 2, 3, 64, 96)
    with torch.inference_mode():
        expected = net.mix(torch.cat([x[:, 0], x[:, 1]], 1))
        torch.testing.assert_close(net(x), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(net.forward_pair(x[:, 0], x[:, 1]), expected, rtol=1e-5, atol=1e-5)


def test_stage_busy_sums_each_stage_of_a_ray_timeline(tmp_path):
    events = [{"name": "pipeline.stream.decode_segment", "ph": "X", "dur": 1_500_000},
              {"name": "pipeline.stream.decode_segment", "ph": "X", "dur": 500_000},
              {"name": "predict_chunks", "ph": "X", "dur": 3_000_000},
              {"name": "submit_task", "ph": "X", "dur": 9_000_000},  # not a stage
              {"name": "pipeline.stream.store_tiles", "ph": "i", "dur": 7_000_000}]  # not a duration event
    trace = tmp_path / "timeline.json"
    trace.write_text(json.dumps(events))
    assert throughput.stage_busy(trace) == {"decode+ingest": 2.0, "model (summed over lanes)": 3.0}


def test_the_model_rate_runs_one_pass_per_lane():
    rate = throughput.model_rate(throughput.NULL_MODEL, tile=32, halo=0, batch=1, device="cpu", repeats=1)
    assert rate > 0
