"""Scene statistics: make a tiled prediction equal one forward pass over the whole scene.

Some layers see their whole input window: InstanceNorm normalises by the window's mean
and variance, squeeze-excite gates and image-pooling branches (:class:`GlobalMean`) by its
mean. A scene predicted tile by tile therefore differs from one pass over the scene, by
however much the windows' statistics differ from the scene's.

:class:`SceneStatistics` measures those statistics over a whole scene, tile by tile, and
then runs every tile with them fixed. A layer's statistics can only be measured once
those of every statistic layer feeding it are fixed, so they are measured in *levels*:
level 1 are the layers that depend on no other, level k those that depend on level k-1 at
most. Each level costs one pass over the tiles (cut short after its layers). The levels
are found once per model from its autograd graph (:meth:`SceneStatistics.levels`).

Layers are identified per call (``"name#0"``, ``"name#1"``): a siamese encoder calls the
same module once per date, and each date has statistics of its own.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.layers.pooling import GlobalMean

#: Per layer call: (mean, variance) per channel (variance unused by GlobalMean).
Stats = dict[str, tuple[np.ndarray, np.ndarray]]

# Layers whose output depends on the whole window in a way that cannot be reduced to a
# mean and a variance (attention mixes every position with every other).
_WINDOW_WIDE = (nn.MultiheadAttention, nn.GroupNorm, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)


class StatisticsUnsupported(ValueError):
    """The model has window-wide layers that scene statistics cannot reproduce."""


def _is_statistic(module: nn.Module) -> bool:
    if isinstance(module, GlobalMean):
        return True
    # With running statistics an InstanceNorm in eval mode is a local layer.
    return isinstance(module, nn.InstanceNorm2d) and not module.track_running_stats


@dataclass
class Moments:
    """Weighted statistics of some pixels per channel: total weight, mean and sum of squared deviations.

    Windows are combined with Chan et al.'s pairwise update, which stays accurate where
    ``E[x^2] - E[x]^2`` would cancel (a mean much larger than the spread).
    """

    n: float
    mean: np.ndarray  # float64
    m2: np.ndarray  # float64: sum of w * (x - mean)^2

    def __add__(self, other: Moments) -> Moments:
        n = self.n + other.n
        if not n:
            return self
        delta = other.mean - self.mean
        return Moments(n, self.mean + delta * (other.n / n), self.m2 + other.m2 + delta ** 2 * (self.n * other.n / n))

    def finalize(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, population variance) per channel."""
        if self.n <= 0:
            raise ValueError("no pixel was measured for this layer: every tile lacked valid data")
        return self.mean.astype("float32"), (self.m2 / self.n).astype("float32")


def add_moments(total: dict[str, Moments], part: Mapping[str, Moments]) -> dict[str, Moments]:
    """Combine per-call moments (``total`` is updated and returned)."""
    for key, m in part.items():
        total[key] = total[key] + m if key in total else m
    return total


def _moments(x: torch.Tensor, weights: torch.Tensor) -> Moments:
    """Weighted moments of ``x (B, C, h, w)``; ``weights (B, H, W)`` is at input resolution.

    Weighted sums are matrix products (no copy of ``x`` per sum); the deviations need one.
    """
    b, c, h, w = x.shape
    wf = F.adaptive_avg_pool2d(weights[:, None].to(x.device, torch.float32), (h, w)).reshape(b, h * w, 1)
    xf = x.float().reshape(b, c, h * w)
    n = float(wf.sum())
    if not n:
        zeros = np.zeros(c)
        return Moments(0.0, zeros, zeros)
    mean = torch.bmm(xf, wf).sum(0)[:, 0] / n
    dev = (xf - mean.view(1, c, 1)).square_()
    m2 = torch.bmm(dev, wf).sum(0)[:, 0]
    return Moments(n, mean.double().cpu().numpy(), m2.double().cpu().numpy())


def _apply(module: nn.Module, x: torch.Tensor, stat: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """What ``module`` returns for ``x`` when its window statistics are replaced by ``stat``."""
    mean, var = stat
    c = mean.numel()
    if isinstance(module, GlobalMean):
        return mean.view(1, c, 1, 1).expand(x.shape[0], c, 1, 1).to(x.dtype)
    y = (x - mean.view(1, c, 1, 1)) / torch.sqrt(var.view(1, c, 1, 1) + module.eps)
    if module.affine:
        y = y * module.weight.view(1, c, 1, 1) + module.bias.view(1, c, 1, 1)
    return y.to(x.dtype)


class _Every:
    """A set that holds every layer call (record them all)."""

    def __contains__(self, key: object) -> bool:
        return True


_EVERY = _Every()


class _Collected(Exception):
    """Raised inside a forward pass once every layer it was run for has been measured."""


class SceneStatistics:
    """Measure and apply scene-wide statistics for the window-dependent layers of ``model``."""

    def __init__(self, model: nn.Module) -> None:
        wide: dict[str, list[str]] = {}
        for name, m in model.named_modules():
            if isinstance(m, _WINDOW_WIDE):
                wide.setdefault(type(m).__name__, []).append(name)
        if wide:
            found = ", ".join(f"{kind} x{len(names)} (e.g. {names[0]})" for kind, names in wide.items())
            raise StatisticsUnsupported(
                f"{type(model).__name__} has layers that look at the whole window in ways scene statistics cannot "
                f"reproduce: {found}; run it with --statistics window"
            )
        self.model = model
        self.layers = {name: m for name, m in model.named_modules() if _is_statistic(m)}
        self._levels: list[list[str]] | None = None

    @contextmanager
    def _hooks(self, fixed: Mapping[str, tuple] | None = None, record: set[str] | _Every | None = None,
               measure: Callable[[torch.Tensor], object] | None = None, strict: bool = False,
               stop: bool = False) -> Iterator[dict]:
        """Fix the statistics of the calls in ``fixed``; ``measure`` the inputs of the calls in ``record``.

        Yields the dict of measurements of the latest forward pass (call -> ``measure(input)``), in
        call order. ``strict``: a call that is neither fixed nor recorded is an error (every call
        must be fixed). ``stop``: raise :class:`_Collected` once every call in ``record`` is measured.
        """
        device = next(self.model.parameters()).device
        fixed_t = {k: tuple(a if isinstance(a, torch.Tensor) else torch.tensor(a, device=device) for a in stat)
                   for k, stat in (fixed or {}).items()}
        record = record or set()
        measured: dict = {}
        calls: dict[str, int] = defaultdict(int)

        def reset(_module, _args):
            calls.clear()
            measured.clear()

        def hook_for(name: str):
            def hook(module, args, output):
                key = f"{name}#{calls[name]}"
                calls[name] += 1
                if key in record:
                    measured[key] = measure(args[0])
                    if stop and len(measured) == len(record):
                        raise _Collected
                if key in fixed_t:
                    return _apply(module, args[0], fixed_t[key])
                if strict:
                    raise KeyError(f"no scene statistics for layer call {key}: they were measured on another model")
                return output  # a later level's call: its window statistics only reach later levels
            return hook

        handles = [self.model.register_forward_pre_hook(reset)]
        handles += [m.register_forward_hook(hook_for(name)) for name, m in self.layers.items()]
        try:
            yield measured
        finally:
            for h in handles:
                h.remove()

    def levels(self, in_channels: int, divisor: int = 1) -> list[list[str]]:
        """The layer calls grouped by level (see the module doc), found once per model.

        The dependencies are structural: every call's statistics are made leaves of an
        autograd graph, and a call depends on another when the graph links that one's
        statistics to its input (whatever the values: a saturated gate still counts).
        """
        if self._levels is not None:
            return self._levels
        side = 4 * max(int(divisor), 16)
        device = next(self.model.parameters()).device
        x = torch.randn(1, 2, in_channels, side, side, generator=torch.Generator().manual_seed(0)).to(device)
        ones = torch.ones(1, side, side)
        with torch.no_grad(), self._hooks(record=_EVERY, measure=lambda t: _moments(t, ones)) as measured:
            self.model(x)
            keys = list(measured)  # call order: a call can only depend on earlier ones
            leaves = {k: tuple(torch.tensor(a, device=device, requires_grad=True) for a in m.finalize())
                      for k, m in measured.items()}
        level = {k: 1 for k in keys}
        with torch.enable_grad(), self._hooks(fixed=leaves, record=set(keys), measure=lambda t: t.sum()) as sums:
            self.model(x)
            for i, k in enumerate(keys[1:], 1):
                earlier = keys[:i]
                grads = torch.autograd.grad(sums[k], [leaves[j][0] for j in earlier], retain_graph=True,
                                            allow_unused=True)
                level[k] = 1 + max((level[j] for j, g in zip(earlier, grads) if g is not None), default=0)
        self._levels = [[k for k in keys if level[k] == n] for n in range(1, max(level.values(), default=0) + 1)]
        return self._levels

    def collect(self, x: torch.Tensor, weights: torch.Tensor, level: list[str], fixed: Stats) -> dict[str, Moments]:
        """Moments of the inputs of the calls in ``level`` over the pixels ``weights (B, H, W)`` selects.

        ``x`` is a normalised batch ``(B, 2, C, H, W)``; the calls of earlier levels use ``fixed``.
        The forward pass stops as soon as every call of ``level`` has been measured.
        """
        with torch.inference_mode(), self._hooks(fixed=fixed, record=set(level), stop=True,
                                                 measure=lambda t: _moments(t, weights)) as measured:
            try:
                self.model(x)
            except _Collected:
                pass
            return dict(measured)

    @contextmanager
    def fixed(self, stats: Stats) -> Iterator[None]:
        """Within the block the model's statistic layers use ``stats`` instead of their window's."""
        with self._hooks(fixed=stats, strict=True):
            yield


def measure_levels(levels: list[list[str]],
                   measure: Callable[[list[str], Stats], Mapping[str, Moments]]) -> Stats:
    """Scene statistics of every level in turn: ``measure(level, fixed so far)`` sums one pass over the tiles."""
    fixed: Stats = {}
    for level in levels:
        total = measure(level, dict(fixed))
        missing = set(level) - set(total)
        if missing:
            raise ValueError(f"the pass over the tiles measured no pixel for {sorted(missing)[:3]}")
        fixed.update({k: total[k].finalize() for k in level})
    return fixed
