"""Losses: masked BCE/CE (weighted), soft Dice, their sum; invalid pixels count nowhere."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.learn.losses import ChangeLoss, auto_change_weight, cross_entropy, dice


def _batch(k=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, k, 8, 8, generator=g).requires_grad_()
    target = (torch.rand(2, 8, 8, generator=g) > 0.7).to(torch.uint8)
    valid = torch.rand(2, 8, 8, generator=g) > 0.2
    return logits, target, valid


def test_bce_matches_torch_on_valid_pixels_and_weights_change():
    logits, target, valid = _batch()
    logits = logits.detach()
    ref = F.binary_cross_entropy_with_logits(logits[:, 0][valid], target[valid].float())
    assert float(cross_entropy(logits, target, valid)) == pytest.approx(float(ref), rel=1e-6)
    w = torch.where(target[valid].bool(), 3.0, 1.0)
    per = F.binary_cross_entropy_with_logits(logits[:, 0][valid], target[valid].float(), reduction="none")
    assert float(cross_entropy(logits, target, valid, 3.0)) == pytest.approx(float((per * w).sum() / w.sum()), rel=1e-6)


def test_softmax_ce_for_two_classes():
    logits, target, valid = _batch(k=2)
    logits = logits.detach()
    ref = F.cross_entropy(logits.permute(0, 2, 3, 1)[valid], target[valid].long())
    assert float(cross_entropy(logits, target, valid)) == pytest.approx(float(ref), rel=1e-6)


@pytest.mark.parametrize("kind", ["ce", "dice", "ce+dice"])
@pytest.mark.parametrize("k", [1, 2])
def test_invalid_pixels_get_no_gradient(kind, k):
    logits, target, valid = _batch(k=k)
    ChangeLoss(kind, 2.0)(logits, target, valid).backward()
    assert (logits.grad.permute(0, 2, 3, 1)[~valid] == 0).all()
    assert logits.grad.abs().sum() > 0


def test_dice_is_near_zero_for_a_confident_right_answer_and_sum_adds():
    _, target, valid = _batch()
    logits = (target.float() * 2 - 1).unsqueeze(1) * 20
    assert float(dice(logits, target, valid)) < 1e-3
    logits, target, valid = _batch(seed=4)
    logits = logits.detach()
    both = ChangeLoss("ce+dice")(logits, target, valid)
    assert float(both) == pytest.approx(float(cross_entropy(logits, target, valid) + dice(logits, target, valid)))
    with pytest.raises(ValueError, match="unknown loss"):
        ChangeLoss("focal")


def test_auto_change_weight():
    assert auto_change_weight(0.2) == pytest.approx(2.0)
    assert auto_change_weight(0.001) == 10.0 and auto_change_weight(0.6) == 1.0 and auto_change_weight(0.0) == 1.0
