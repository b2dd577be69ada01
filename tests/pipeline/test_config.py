"""RunConfig: frozen, validated, JSON round trip, unknown fields rejected."""
from __future__ import annotations

import dataclasses
import json

import pytest

from pipeline.config import ConfigError, RunConfig


def test_round_trip_and_frozen():
    cfg = RunConfig("b.tif", "a.tif", "out.tif", bands=(3, 2, 1), threshold=0.3, mask=True)
    again = RunConfig.from_dict(json.loads(cfg.to_json()))
    assert again == cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.tile = 256  # type: ignore[misc]


@pytest.mark.parametrize("kwargs,text", [
    ({"tile": 100}, "--tile must be a multiple of 16"),
    ({"halo": 512}, "--halo must be between 0 and the tile size"),
    ({"threshold": 1.0}, "--threshold must lie strictly between 0 and 1"),
    ({"workers": 0}, "--workers must be at least 1"),
    ({"probability": "uint16"}, "--probability must be one of uint8, float32"),
    ({"bands": (0, 1)}, "1-based"),
    ({"statistics": "global"}, "--statistics must be one of window, scene"),
    ({"output": "b.tif"}, "would overwrite an input"),
])
def test_invalid_values_name_the_option(kwargs, text):
    with pytest.raises(ConfigError, match=text):
        RunConfig(**{"before": "b.tif", "after": "a.tif", "output": "out.tif", **kwargs})


def test_unknown_fields_are_rejected():
    with pytest.raises(ConfigError, match="unknown run options \\['tiles'\\]"):
        RunConfig.from_dict({"before": "b", "after": "a", "output": "o", "tiles": 3})
