"""Learning-rate schedule: linear warm-up, then poly or cosine decay, as a factor of the base rate per step."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch


def lr_factor(total_steps: int, warmup_steps: int, kind: str = "poly", power: float = 0.9,
              final: float = 0.0) -> Callable[[int], float]:
    """Factor of the base learning rate before optimiser step ``step`` (0-based).

    Warm-up rises linearly from ``1 / (warmup_steps + 1)`` to 1; then ``poly``:
    ``(1 - t) ** power`` or ``cosine``: ``(1 + cos(pi t)) / 2``, with ``t`` going from 0 to
    1 over the remaining steps, scaled to end at ``final``.
    """
    total_steps = max(1, total_steps)
    warmup_steps = min(max(0, warmup_steps), total_steps - 1)
    decay_steps = max(1, total_steps - warmup_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        t = min(1.0, (step - warmup_steps) / decay_steps)
        shape = (1 - t) ** power if kind == "poly" else 0.5 * (1 + math.cos(math.pi * t))
        return final + (1 - final) * shape

    return factor


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup: float,
                   kind: str) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step ``LambdaLR``; its state (the step count) goes into ``last.pt``."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(total_steps, int(round(warmup * total_steps)), kind))
