"""Dataset discovery (LEVIR layout, list splits, split folders, CSV/JSONL manifests), reading and statistics."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from pipeline.learn.datasets import (
    DatasetError,
    available_splits,
    infer_dataset_label_values,
    load_dataset,
    read_labelled,
    read_pair,
    scan_dataset,
    split_samples,
)
from pipeline.learn.evaluate import LabelValues
from tests.conftest import LEVIR_256, require
from tests.data.make_change_dataset import make_dataset


@pytest.fixture
def levir_like(tmp_path):
    return make_dataset(tmp_path / "ds", n=5, size=32, seed=1, splits={"train": [0, 1, 2], "val": [3], "test": [4]})


def test_levir_layout_and_list_splits(levir_like):
    everything = load_dataset(str(levir_like))
    assert [s.name for s in everything] == [f"pair_{i:02d}" for i in range(5)]
    assert everything[0].label.endswith("label/pair_00.png")
    assert available_splits(str(levir_like)) == ["test", "train", "val"]
    assert [s.name for s in load_dataset(str(levir_like), "train")] == ["pair_00", "pair_01", "pair_02"]
    assert [s.name for s in load_dataset(str(levir_like), "test")] == ["pair_04"]
    with pytest.raises(DatasetError, match="no split 'holdout'.*test, train, val"):
        load_dataset(str(levir_like), "holdout")


def test_split_subfolders(tmp_path):
    make_dataset(tmp_path / "root" / "train", n=3, size=16)
    make_dataset(tmp_path / "root" / "test", n=2, size=16, seed=2)
    assert available_splits(str(tmp_path / "root")) == ["test", "train"]
    assert len(load_dataset(str(tmp_path / "root"), "test")) == 2


def test_missing_partner_and_missing_label_are_named(levir_like):
    (levir_like / "B" / "pair_03.png").unlink()
    with pytest.raises(DatasetError, match="no partner in B/.*pair_03"):
        load_dataset(str(levir_like))
    (levir_like / "label" / "pair_01.png").unlink()
    shutil.copy(levir_like / "A" / "pair_00.png", levir_like / "B" / "pair_03.png")
    with pytest.raises(DatasetError, match="1 pair\\(s\\) have no label.*pair_01"):
        load_dataset(str(levir_like))
    assert load_dataset(str(levir_like), need_labels=False)[1].label is None


def test_csv_and_jsonl_manifests_with_relative_paths_and_splits(levir_like):
    rows = [("pair_00", "train"), ("pair_01", "train"), ("pair_03", "val")]
    (levir_like / "m.csv").write_text("A,B,label,split\n" + "".join(
        f"A/{n}.png,B/{n}.png,label/{n}.png,{s}\n" for n, s in rows))
    (levir_like / "m.jsonl").write_text("".join(json.dumps(
        {"before": str(levir_like / "A" / f"{n}.png"), "after": f"B/{n}.png", "label": f"label/{n}.png",
         "name": f"x{n}", "split": s}) + "\n" for n, s in rows))
    csv_all = load_dataset(str(levir_like / "m.csv"))
    assert [s.name for s in csv_all] == ["pair_00", "pair_01", "pair_03"]
    assert csv_all[0].after == str(levir_like / "B" / "pair_00.png")
    assert [s.name for s in load_dataset(str(levir_like / "m.jsonl"), "val")] == ["xpair_03"]
    assert available_splits(str(levir_like / "m.csv")) == ["train", "val"]
    pair, valid = read_pair(csv_all[2])
    assert pair.shape == (2, 3, 32, 32) and valid.all()
    (levir_like / "bad.csv").write_text("first,second\nA/pair_00.png,B/pair_00.png\n")
    with pytest.raises(DatasetError, match="lacks a before/after path"):
        load_dataset(str(levir_like / "bad.csv"))


def test_label_conventions_and_nodata(tmp_path):
    root = make_dataset(tmp_path / "ds", n=2, size=16)
    raw = np.array(Image.open(root / "label" / "pair_00.png"))
    osc = np.where(raw > 0, 2, 1).astype("uint8")  # OSCD: 1 no change, 2 change
    Image.fromarray(osc).save(root / "label" / "pair_00.png")
    Image.fromarray(np.ones_like(osc)).save(root / "label" / "pair_01.png")  # all "1": only OSCD makes sense together
    samples = load_dataset(str(root))
    values = infer_dataset_label_values(samples)
    assert values == LabelValues(1, 2, None)
    change, labelled = read_labelled(samples[0], values)
    assert np.array_equal(change, raw > 0) and labelled.all()
    # 0/1 with 255 unlabeled (Landsat Taizhou): unlabeled pixels are excluded.
    taizhou = (raw > 0).astype("uint8")
    taizhou[:4] = 255
    Image.fromarray(taizhou).save(root / "label" / "pair_00.png")
    Image.fromarray(np.zeros_like(taizhou)).save(root / "label" / "pair_01.png")
    values = infer_dataset_label_values(load_dataset(str(root)))
    assert values == LabelValues(0, 1, 255)
    change, labelled = read_labelled(samples[0], values)
    assert not labelled[:4].any() and labelled[4:].all()
    assert np.array_equal(change[4:], raw[4:] > 0)
    with pytest.raises(DatasetError, match="outside the label convention"):
        read_labelled(samples[0], LabelValues(0, 1))


def test_grid_mismatch_is_a_clear_error(tmp_path):
    root = make_dataset(tmp_path / "ds", n=1, size=16)
    Image.fromarray(np.zeros((8, 8), "uint8")).save(root / "label" / "pair_00.png")
    with pytest.raises(DatasetError, match="8x8 but its images are 16x16.*--align"):
        read_labelled(load_dataset(str(root))[0], LabelValues(0, 255), (16, 16))
    Image.fromarray(np.zeros((8, 8, 3), "uint8")).save(root / "B" / "pair_00.png")
    with pytest.raises(DatasetError, match="one grid"):
        read_pair(load_dataset(str(root))[0])


def test_seeded_split_holds_out_a_fraction(levir_like):
    samples = load_dataset(str(levir_like))
    train, val = split_samples(samples, 0.4, seed=3)
    assert len(val) == 2 and len(train) == 3 and not {s.name for s in train} & {s.name for s in val}
    assert split_samples(samples, 0.4, seed=3) == (train, val)
    with pytest.raises(DatasetError, match="--val"):
        split_samples(samples[:1], 0.2, 0)


def test_scan_matches_numpy_statistics(levir_like):
    samples = load_dataset(str(levir_like))
    stats = scan_dataset(samples, (3, 1), None)
    pixels = np.concatenate([read_pair(s)[0][:, [2, 0]].transpose(1, 0, 2, 3).reshape(2, -1) for s in samples], 1)
    labels = np.stack([np.array(Image.open(s.label)) for s in samples])
    assert stats.bands == (3, 1) and stats.scale == pytest.approx(1 / 255)
    np.testing.assert_allclose(stats.mean, pixels.mean(1) / 255, rtol=1e-9)
    np.testing.assert_allclose(stats.std, pixels.std(1) / 255, rtol=1e-6)
    assert stats.change_fraction == pytest.approx((labels == 255).mean())
    assert stats.label_values == LabelValues(0, 255, None)


def test_real_levir_crops():
    root = require(LEVIR_256)
    samples = load_dataset(str(root))
    assert len(samples) == 8
    assert infer_dataset_label_values(samples) == LabelValues(0, 255, None)
    pair, valid = read_pair(samples[0])
    assert pair.shape == (2, 3, 256, 256) and pair.dtype == np.uint8 and valid.all()
