"""Paired augmentations: one geometry for both dates and the label; photometry per date; seeded."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.learn.augment import Augment, geometric, photometric, random_crop


def _coded(h=20, w=24):
    """A pair whose every pixel encodes its own (row, col), and a label/valid derived from it."""
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.stack([np.stack([yy, xx, yy * 100 + xx]), np.stack([yy, xx, yy * 100 + xx + 7])]).astype("float32")
    return image, (yy * 100 + xx) % 3 == 0, (yy + xx) % 5 != 0


@pytest.mark.parametrize("seed", range(12))
def test_geometry_is_the_same_for_both_dates_and_the_label(seed):
    image, label, valid = _coded()
    rng = np.random.default_rng(seed)
    image, label, valid = random_crop(image, label, valid, 16, rng)
    out, lab, val = geometric(image, label, valid, Augment(swap=0.5), rng)
    code_a = out[0, 2].astype(int)
    code_b = out[1, 2].astype(int)
    swapped = bool((code_a - code_b == 7).all())
    assert swapped or (code_b - code_a == 7).all()
    code = code_b if swapped else code_a  # BEFORE's own code at each output pixel
    assert np.array_equal(lab, code % 3 == 0)  # the label moved with the image
    assert np.array_equal(val, (code // 100 + code % 100) % 5 != 0)
    assert np.array_equal(out[0, 0], out[1, 0]) and np.array_equal(out[0, 1], out[1, 1])


def test_all_transforms_occur_and_are_seeded():
    image, label, valid = _coded(16, 16)
    seen = set()
    for seed in range(40):
        out, *_ = geometric(image, label, valid, Augment(), np.random.default_rng(seed))
        seen.add((int(out[0, 2, 0, 0]), int(out[0, 2, 0, -1]), bool(out[0, 2, 0, 0] % 100 != out[1, 2, 0, 0] % 100 - 7)))
        again, *_ = geometric(image, label, valid, Augment(), np.random.default_rng(seed))
        assert np.array_equal(out, again)
    assert len(seen) >= 12  # 8 orientations x swapped or not, most of them drawn


def test_small_images_are_padded_with_invalid_pixels():
    image, label, valid = _coded(10, 12)
    out, lab, val = random_crop(image, label, valid, 16, np.random.default_rng(0))
    assert out.shape == (2, 3, 16, 16) and lab.shape == val.shape == (16, 16)
    assert not val[10:].any() and not val[:, 12:].any()
    assert np.array_equal(val[:10, :12], valid)


def test_photometric_jitter_differs_per_date_and_keeps_structure():
    x = np.random.default_rng(0).normal(size=(2, 3, 8, 8)).astype("float32")
    out = photometric(x, Augment(brightness=0.2, contrast=0.2), np.random.default_rng(1))
    gains = []
    for d in range(2):  # per date: one affine map for all bands
        a, b = np.polyfit(x[d].ravel(), out[d].ravel(), 1)
        np.testing.assert_allclose(out[d], a * x[d] + b, atol=1e-5)
        assert 0.8 <= a <= 1.2 and abs(b) <= 0.2
        gains.append(a)
    assert gains[0] != pytest.approx(gains[1])
    assert photometric(x, Augment.none(), np.random.default_rng(1)) is x
