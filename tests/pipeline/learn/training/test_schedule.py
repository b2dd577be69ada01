"""Learning-rate schedule: linear warm-up, then poly or cosine decay; resumable state."""
from __future__ import annotations

import math

import pytest
import torch

from pipeline.learn.training.schedule import lr_factor, make_scheduler


def test_warmup_then_poly():
    f = lr_factor(100, 10, "poly", power=0.9)
    assert [f(s) for s in range(3)] == pytest.approx([1 / 11, 2 / 11, 3 / 11])
    assert f(9) == pytest.approx(10 / 11) and f(10) == 1.0
    assert f(55) == pytest.approx(0.5 ** 0.9)
    assert f(99) == pytest.approx((1 / 90) ** 0.9)
    values = [f(s) for s in range(10, 100)]
    assert all(a > b for a, b in zip(values, values[1:]))


def test_cosine():
    f = lr_factor(20, 0, "cosine")
    assert f(0) == 1.0 and f(10) == pytest.approx(0.5) and f(15) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.75)))


def test_scheduler_state_resumes_the_same_rates():
    def rates(sched, opt, n):
        out = []
        for _ in range(n):
            opt.step()
            sched.step()
            out.append(sched.get_last_lr()[0])
        return out

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=0.1)
    sched = make_scheduler(opt, 30, 0.1, "poly")
    whole = rates(sched, opt, 20)
    opt2 = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched2 = make_scheduler(opt2, 30, 0.1, "poly")
    rates(sched2, opt2, 8)
    state = sched2.state_dict()
    opt3 = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    opt3.load_state_dict(opt2.state_dict())
    sched3 = make_scheduler(opt3, 30, 0.1, "poly")
    sched3.load_state_dict(state)
    assert rates(sched3, opt3, 12) == pytest.approx(whole[8:])
