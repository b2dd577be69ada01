"""Weights: cache + sha256 verification, local paths, changemap checkpoints, clear errors."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch

import models
from models import WeightsError
from models import weights as W
from models.registry import UnknownModelError


def test_known_weights_are_cached_and_verified(cache_dir):
    loaded = models.resolve_weights("tinycd", "levir")
    cached = list((cache_dir / "weights" / "tinycd").glob("levir-*.pth"))
    assert len(cached) == 1
    assert W.sha256_of(cached[0]) == loaded.meta.sha256 == W.catalog()["tinycd"]["levir"]["sha256"]
    assert loaded.meta.threshold == 0.5 and loaded.meta.bands == (1, 2, 3)
    assert "non-commercial" in loaded.meta.license


def test_a_corrupted_cache_entry_is_replaced(cache_dir):
    models.resolve_weights("tinycd", "levir")
    cached = next((cache_dir / "weights" / "tinycd").glob("levir-*.pth"))
    cached.write_bytes(b"not the checkpoint")
    loaded = models.resolve_weights("tinycd", "levir")
    assert W.sha256_of(cached) == loaded.meta.sha256


def test_a_wrong_packaged_file_fails_verification(cache_dir, tmp_path, monkeypatch):
    fake_dir = tmp_path / "pkg"
    fake_dir.mkdir()
    catalog = W.catalog()
    (fake_dir / "catalog.json").write_text(json.dumps(catalog))
    (fake_dir / catalog["tinycd"]["levir"]["file"]).write_bytes(b"tampered")
    monkeypatch.setattr(W, "_CATALOG_PATH", fake_dir / "catalog.json")
    with pytest.raises(WeightsError, match="failed verification: sha256"):
        models.resolve_weights("tinycd", "levir")
    assert not list((cache_dir / "weights" / "tinycd").glob("*"))  # nothing half-written


def test_unknown_names_and_models_are_clear_errors():
    with pytest.raises(WeightsError, match="known: levir, whu"):
        models.resolve_weights("tinycd", "imagenet")
    with pytest.raises(UnknownModelError, match="known models are .*tinycd"):
        models.create_model("resnet-9000")


def test_a_file_that_is_no_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "weights.pth"
    bad.write_text("hello")
    with pytest.raises(WeightsError, match="not a readable PyTorch checkpoint"):
        models.resolve_weights("tinycd", str(bad))


def test_weights_of_another_architecture_name_the_mismatch(tmp_path):
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(4, 3, 3, 3)}, other)
    with pytest.raises(WeightsError, match="do not fit model 'tinycd': .*missing keys.*unexpected keys"):
        models.create_model("tinycd", weights=str(other))
    six_band = tmp_path / "six.pth"
    torch.save(models.create_model("tinycd", in_channels=6).state_dict(), six_band)
    with pytest.raises(WeightsError, match="shape mismatches"):
        models.create_model("tinycd", weights=str(six_band))


def test_changemap_checkpoint_round_trip_carries_metadata(tmp_path):
    model = models.create_model("tinycd", in_channels=4)
    meta = replace(W.WeightsMeta(model="tinycd", model_args={"in_channels": 4, "num_classes": 1},
                                 bands=(4, 3, 2, 1), scale=1e-4, mean=(0.1,) * 4, std=(0.2,) * 4, threshold=0.37))
    path = tmp_path / "best.pt"
    W.save_checkpoint(path, model, meta)
    loaded = models.resolve_weights("tinycd", str(path))
    assert loaded.meta.bands == (4, 3, 2, 1) and loaded.meta.threshold == 0.37 and loaded.meta.in_channels == 4
    rebuilt = models.create_model("tinycd", weights=loaded)
    for k, v in model.state_dict().items():
        assert torch.equal(v, rebuilt.state_dict()[k])
    with pytest.raises(WeightsError, match="trained for model 'tinycd', not"):
        from models.registry import _REGISTRY, ModelEntry

        _REGISTRY["tinycd-alias"] = ModelEntry("tinycd-alias", _REGISTRY["tinycd"].factory, "alias")
        try:
            models.resolve_weights("tinycd-alias", str(path))
        finally:
            del _REGISTRY["tinycd-alias"]


def test_weights_from_a_url_go_through_the_cache(cache_dir):
    src = W._CATALOG_PATH.parent / "tinycd_levir.pth"
    loaded = models.resolve_weights("tinycd", src.as_uri())  # file:// URL through fsspec
    assert loaded.meta.sha256 == W.catalog()["tinycd"]["levir"]["sha256"]
    assert list((cache_dir / "weights" / "urls").glob("*tinycd_levir.pth"))


def test_mmseg_style_checkpoints_load_after_key_mapping(tmp_path):
    model = models.create_model("changeformer-mit-b0").eval()
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    state["auxiliary_head.conv_seg.weight"] = torch.zeros(2, 8, 1, 1)
    path = tmp_path / "iter_40000.pth"
    torch.save({"state_dict": state, "meta": {"mmseg_version": "1.2.2", "CLASSES": ["unchanged", "changed"]}}, path)
    loaded = models.resolve_weights("changeformer-mit-b0", str(path))
    rebuilt = models.create_model("changeformer-mit-b0", weights=loaded)
    assert all(torch.equal(v, rebuilt.state_dict()[k]) for k, v in model.state_dict().items())
    del state["module.decode_head.conv_seg.weight"]
    torch.save({"state_dict": state, "meta": {"mmseg_version": "1.2.2"}}, path)
    with pytest.raises(WeightsError, match=r"1 missing keys \(e\.g\. decode_head\.conv_seg\.weight\)"):
        models.create_model("changeformer-mit-b0", weights=str(path))


def test_rgb_weights_adapt_to_more_bands():
    """Rule: band i takes RGB band i mod 3's weights, input axes scaled by 3/N (same response to repeated RGB)."""
    rgb = models.create_model("tinycd", weights="levir").eval()
    six = models.create_model("tinycd", weights="levir", in_channels=6).eval()
    assert six._backbone[0][0].weight.shape == (48, 6, 3, 3)
    torch.testing.assert_close(six._backbone[0][0].weight[:, 3:], rgb._backbone[0][0].weight / 2)
    x = torch.rand(1, 2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(six(torch.cat([x, x], 2)), rgb(x), atol=2e-4, rtol=1e-3)
    loaded = W.adapt_input_channels(models.resolve_weights("tinycd", "levir"), six.state_dict(), 6)
    assert loaded.meta.mean == (0.485, 0.456, 0.406) * 2 and loaded.meta.in_channels == 6


PACKAGED_LEVIR = W._CATALOG_PATH.parent / "tinycd_levir.pth"


def _copying_fetch(calls: list[str]):
    """A fetch(url, path) that serves the packaged LEVIR checkpoint for any URL and records the calls."""

    def fetch(url: str, path: str) -> None:
        calls.append(url)
        shutil.copyfile(PACKAGED_LEVIR, path)

    return fetch


def test_a_url_without_a_fetcher_is_a_clear_error(cache_dir):
    url = "https://example.org/weights/levir.pth"
    with pytest.raises(WeightsError, match=r"a URL, but no download function was given: pass fetch="):
        models.resolve_weights("tinycd", url)
    with pytest.raises(WeightsError, match="no download function was given"):
        models.create_model("tinycd", weights=url)
    with pytest.raises(WeightsError, match="no download function was given"):
        W.checkpoint_model(url)
    assert not list(cache_dir.rglob("*.pth")) and not list(cache_dir.rglob("*.part"))  # nothing half-written


def test_an_injected_fetcher_downloads_urls_once(cache_dir):
    calls: list[str] = []
    url = "https://example.org/weights/levir.pth?token=x"
    loaded = models.resolve_weights("tinycd", url, fetch=_copying_fetch(calls))
    assert loaded.meta.sha256 == W.catalog()["tinycd"]["levir"]["sha256"] and loaded.meta.source == url
    model = models.create_model("tinycd", weights=url, fetch=_copying_fetch(calls))  # strict, from the cache
    assert calls == [url] and model.num_classes == 1
    assert W.checkpoint_model(url) is None  # cached: no fetcher needed; a bare state dict names no model
    assert [p.name.split("-", 1)[1] for p in (cache_dir / "weights" / "urls").iterdir()] == ["levir.pth"]


def test_known_weights_missing_from_the_package_come_from_their_url(cache_dir, tmp_path, monkeypatch):
    fake_dir = tmp_path / "pkg"
    fake_dir.mkdir()
    (fake_dir / "catalog.json").write_text(json.dumps(W.catalog()))  # the catalog without the .pth files
    monkeypatch.setattr(W, "_CATALOG_PATH", fake_dir / "catalog.json")
    with pytest.raises(WeightsError, match="no download function was given"):
        models.resolve_weights("tinycd", "levir")
    calls: list[str] = []
    loaded = models.resolve_weights("tinycd", "levir", fetch=_copying_fetch(calls))
    assert calls == [W.catalog()["tinycd"]["levir"]["url"]]
    assert loaded.meta.sha256 == W.catalog()["tinycd"]["levir"]["sha256"]
