"""Confusion counts and scores against a hand-made example."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.learn.metrics import Confusion, confusion


def test_hand_made_example():
    label = np.array([[1, 1, 0, 0], [1, 0, 0, 0]], bool)
    pred = np.array([[1, 0, 1, 0], [1, 0, 0, 1]], bool)
    valid = np.array([[1, 1, 1, 1], [1, 1, 1, 0]], bool)  # the last FP is nodata
    c = confusion(pred, label, valid)
    assert c == Confusion(tp=2, fp=1, fn=1, tn=3)
    assert c.precision == pytest.approx(2 / 3) and c.recall == pytest.approx(2 / 3)
    assert c.f1 == pytest.approx(2 / 3) and c.iou == pytest.approx(0.5)


def test_sums_over_images_not_averages():
    a, b = Confusion(10, 0, 0, 90), Confusion(0, 5, 5, 90)
    assert (a + b).f1 == pytest.approx(20 / 30)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differs from label shape"):
        confusion(np.zeros((2, 2), bool), np.zeros((2, 3), bool))
