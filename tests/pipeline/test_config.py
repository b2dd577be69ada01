"""The run objects: frozen, validated, JSON round trip, unknown fields rejected, and the CLI derived from them."""
from __future__ import annotations

import json

import pydantic
import pytest

from pipeline.cli import _parser
from pipeline.cli.options import flag
from pipeline.cli.run import PER_PAIR as _PER_PAIR
from pipeline.config import (
    ArchiveOptions,
    ConfigError,
    MapSettings,
    MapSpec,
    ProductSettings,
    RunOptions,
    check_destination,
)


def test_round_trip_and_frozen():
    spec = MapSpec(before="b.tif", after="a.tif", bands=(3, 2, 1), threshold=0.3, mask=True)
    again = MapSpec.from_dict(json.loads(spec.to_json()))
    assert again == spec
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        spec.tile = 256  # type: ignore[misc]


@pytest.mark.parametrize("kwargs,text", [
    ({"tile": 100}, "--tile must be a multiple of 16"),
    ({"halo": 512}, "--halo must be between 0 and the tile size"),
    ({"threshold": 1.0}, "--threshold must lie strictly between 0 and 1"),
    ({"workers": 0}, "--workers must be at least 1"),
    ({"probability": "uint16"}, "--probability must be one of uint8, float32"),
    ({"bands": (0, 1)}, "1-based"),
    ({"statistics": "global"}, "--statistics must be one of window, scene"),
    ({"compress": "lzw"}, "--compress must be one of deflate, zstd"),
    ({"output": "b.tif"}, "would overwrite an input"),
])
def test_invalid_values_name_the_option(kwargs, text):
    spec_fields = {k: v for k, v in kwargs.items() if k in MapSpec.model_fields}
    run_fields = {k: v for k, v in kwargs.items() if k in RunOptions.model_fields}
    with pytest.raises(ConfigError, match=text):
        spec = MapSpec(**{"before": "b.tif", "after": "a.tif", **spec_fields})
        check_destination(spec, RunOptions(**{"output": "out.tif", **run_fields}))


def test_unknown_fields_are_rejected():
    with pytest.raises(ConfigError, match="unknown run options \\['tiles'\\]"):
        MapSpec.from_dict({"before": "b", "after": "a", "tiles": 3})


def test_the_stamp_holds_only_what_defines_the_map(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = MapSpec(before="b.tif", after="s3://bucket/a.tif", tile=256)
    stamp = spec.stamp()
    assert set(stamp) == set(MapSpec.model_fields)
    assert stamp["before"] == str(tmp_path / "b.tif") and stamp["after"] == "s3://bucket/a.tif"
    assert not {"output", "workers", "batch_size", "workdir", "ray_address", "storage_options"} & set(stamp)
    # The key follows the map, not where or how it is made.
    assert MapSpec(before=str(tmp_path / "b.tif"), after="s3://bucket/a.tif", tile=256).key() == spec.key()
    assert MapSpec(before="b.tif", after="s3://bucket/a.tif", tile=512).key() != spec.key()


def test_storage_options_stay_secret():
    run = RunOptions(storage_options='{"secret": "s3cr3t"}')
    assert "s3cr3t" not in run.to_json() and "s3cr3t" not in repr(run) and run.storage_json() == '{"secret": "s3cr3t"}'


def _dests(parser_name: str) -> set[str]:
    sub = next(a for a in _parser()._actions if a.dest == "command").choices[parser_name]
    return {a.dest for a in sub._actions if a.dest not in ("help", "json")}


def test_the_cli_options_are_the_objects_fields():
    """One declaration per option: the command line cannot drift from the run objects."""
    assert _dests("run") == set(MapSpec.model_fields) | set(RunOptions.model_fields) | set(ProductSettings.model_fields)
    per_pair = set(_PER_PAIR) - set(ArchiveOptions.model_fields)  # derived per pair, e.g. each map's output path
    assert per_pair >= {"output", "keep_workdir", "vector", "stats", "quicklook"}
    assert _dests("archive") == (set(ArchiveOptions.model_fields) | set(MapSettings.model_fields)
                                 | set(RunOptions.model_fields) | set(ProductSettings.model_fields)) - per_pair


def test_cli_defaults_are_the_objects_defaults():
    from pipeline.cli.options import take

    args = _parser().parse_args(["run", "b.tif", "a.tif", "-o", "out.tif"])
    assert take(args, MapSpec) == MapSpec(before="b.tif", after="a.tif")
    assert take(args, RunOptions) == RunOptions(output="out.tif")
    args = _parser().parse_args(["run", "b.tif", "a.tif", "-o", "o.tif", "--bands", "3,2,1", "--batch-size", "8",
                                 "--statistics", "scene", "--mask"])
    assert take(args, MapSpec).bands == (3, 2, 1) and take(args, MapSpec).mask
    assert take(args, RunOptions).batch_size == 8 and flag("batch_size") == "--batch-size"
