"""`changemap run --model NAME` for every registered model (random weights) and for a model config file."""
from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio

import models
from pipeline.cli import main
from pipeline.io import cog

pytestmark = pytest.mark.usefixtures("prefect_harness", "ray_local")
SIAMESE_CFG = {"name": "siamese", "backbone": {"type": "mit", "variant": "b0"}, "head": "changer",
               "interaction": [None, "spatial_exchange", "channel_exchange", "aggregation_distribution"]}


def _run(model: str, synthetic, out) -> None:
    code = main(["run", str(synthetic["before"]), str(synthetic["after"]), "--output", str(out), "--model", model,
                 "--weights", "none", "--tile", "128", "--halo", "16", "--mask", "--probability", "float32"])
    assert code == 0
    assert cog.cog_problems(str(out)) == []
    with rasterio.open(synthetic["before"]) as b, rasterio.open(out) as o:
        assert (o.crs, o.transform, o.shape, o.count) == (b.crs, b.transform, b.shape, 2)
        ok = o.dataset_mask() > 0
        p = o.read(1)
    assert not ok[:, :12].any() and ok[:, 12:].all()
    assert np.isnan(p[~ok]).all() and np.isfinite(p[ok]).all()
    assert float(p[ok].std()) > 0  # a real, varying prediction (random weights vary only slightly)


# The wider MiT variants share their b0 architecture's code path (built and shape-tested in tests/models).
@pytest.mark.slow
@pytest.mark.parametrize("name", [m for m in models.list_models(kind="deep")
                                  if m != "siamese" and not m.endswith(("-mit-b1", "-mit-b2"))])
def test_every_registered_model_runs_through_the_pipeline(name, synthetic, tmp_path):
    _run(name, synthetic, tmp_path / f"{name}.tif")


def test_a_model_config_file_runs_through_the_pipeline(synthetic, tmp_path, capsys):
    cfg = tmp_path / "model.json"
    cfg.write_text(json.dumps(SIAMESE_CFG))
    _run(str(cfg), synthetic, tmp_path / "siamese.tif")
    assert "1 tiles" not in capsys.readouterr().out
