"""Scene-fitted change models: no training, a few parameters fitted to each scene's own pixels.

A scene-fitted model (``kind == "scene-fitted"``) is used in two steps:

1. ``report = model.fit(before, after)`` on a sample of the scene's valid pixels, ``(N, C)``
   arrays of raw values (any dtype). It measures the method's parameters and an automatic
   threshold and returns them as a :class:`FitReport`, JSON-able (``to_dict`` / ``from_dict``)
   so the fit can be stamped on the change map and applied again.
2. ``scene_model = model.for_scene(report)``: a cheap module holding those parameters as
   buffers. Its ``forward`` takes raw values ``(B, 2, C, H, W)`` (any dtype, no normalisation)
   and returns the change *score* ``(B, 1, H, W)`` in 0..1; ``change_probability`` returns it
   unchanged as ``(B, H, W)``.

The score is ``s / (s + scale)``, with ``s >= 0`` the method's change statistic in its native
units and ``scale`` a native value fixed at fit time (the automatic threshold): it is monotone
in ``s``, 0.5 at ``s == scale`` and ``report.threshold`` says where the map's threshold lies in
score units (0.5 unless it was refined, :meth:`SceneFittedModel.threshold_from_histogram`).

The per-pixel computation runs on the input's device in float64 (float32 where the device has
no float64), with autocast disabled, and is a pure function of a pixel's values and the fitted
parameters: tiling cannot change a pixel's score. With ``smooth_radius = r > 0`` the statistic
is averaged over the valid pixels of the ``(2r+1)^2`` window before the score is taken; a tile
then agrees with the whole scene at pixels at least ``r`` from the tile's edge (the pipeline's
64-pixel halo covers any ``r < 64``). NaN input pixels yield NaN.

Otsu's threshold over the scores' histogram is *not* Otsu's threshold over the statistic (the
score is a nonlinear map of it); :meth:`SceneFittedModel.threshold_from_histogram` takes a
histogram of scores and computes Otsu in native units.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from numbers import Integral
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from models.base import ChangeModel

#: Version of the :class:`FitReport` layout.
REPORT_FORMAT = 1


# --------------------------------------------------------------------------------------- Otsu
def otsu_from_histogram(counts: np.ndarray, edges: np.ndarray, centers: np.ndarray | None = None) -> float:
    """Otsu's threshold (the split maximising the between-class variance) of a histogram.

    Args:
        counts: ``(K,)`` counts (or weights) per bin.
        edges: ``(K + 1,)`` increasing bin edges; bins need not be of equal width.
        centers: ``(K,)`` increasing values the bins stand for in the variance (default: the
            edges' midpoints). Otsu in one variable from a histogram in another (e.g. of
            scores, a monotone map of the statistic) passes the statistic's values here.

    Returns:
        A bin edge ``t``: values ``> t`` are the upper class. Where several splits tie (empty
        bins between the modes), the middle of the tied edges, i.e. the middle of the valley.
        A histogram with one occupied bin returns that bin's upper edge (nothing above it).

    Raises:
        ValueError: on mismatched shapes or an empty histogram.
    """
    counts = np.asarray(counts, dtype=np.float64).ravel()
    edges = np.asarray(edges, dtype=np.float64).ravel()
    if edges.size != counts.size + 1 or counts.size == 0:
        raise ValueError(f"a histogram needs K counts and K + 1 edges, got {counts.size} and {edges.size}")
    centers = (edges[:-1] + edges[1:]) / 2 if centers is None else np.asarray(centers, dtype=np.float64).ravel()
    if centers.size != counts.size:
        raise ValueError(f"{counts.size} counts need {counts.size} centers, got {centers.size}")
    ok = np.isfinite(centers) & np.isfinite(counts) & (counts > 0)
    counts = np.where(ok, counts, 0.0)
    centers = np.where(ok, centers, 0.0)
    total = counts.sum()
    if total <= 0:
        raise ValueError("Otsu's threshold of an empty histogram (no finite value was counted)")
    occupied = np.flatnonzero(counts)
    if occupied.size == 1:
        return float(edges[occupied[0] + 1])
    # Shift by the mean for accuracy: the between-class variance is shift-invariant.
    mean = float((counts * centers).sum() / total)
    x = centers - mean
    w0 = np.cumsum(counts)[:-1]
    s0 = np.cumsum(counts * x)[:-1]
    w1 = total - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        # w0 * w1 * (m0 - m1)^2 / total with m0 = s0 / w0, m1 = -s0 / w1 (the total of x is 0)
        between = s0 ** 2 * total / (w0 * w1)
    between[(w0 <= 0) | (w1 <= 0) | ~np.isfinite(between)] = -np.inf
    best = between.max()
    tied = np.flatnonzero(between >= best - 1e-12 * abs(best))
    # The run of tied splits containing the first maximum: its middle edge.
    first = last = int(tied[0])
    for k in tied[1:]:
        if k != last + 1:
            break
        last = int(k)
    return float((edges[first + 1] + edges[last + 1]) / 2)


def otsu_threshold(values: np.ndarray, bins: int = 1024, range: tuple | None = None) -> float:
    """Otsu's threshold of ``values`` over a ``bins``-bin histogram (NaN and infinities ignored).

    Args:
        values: Any array of values.
        bins: Number of equal-width bins.
        range: ``(low, high)`` of the histogram; default the finite values' min and max.
            Values outside it are left out.

    Returns:
        The threshold: values ``> t`` are the upper class (see :func:`otsu_from_histogram`);
        for constant values, that value.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError("Otsu's threshold of no finite value")
    lo, hi = (float(v.min()), float(v.max())) if range is None else (float(range[0]), float(range[1]))
    if not hi > lo:
        return lo
    counts, edges = np.histogram(v, bins=int(bins), range=(lo, hi))
    return otsu_from_histogram(counts, edges)


# --------------------------------------------------------------------------------- the report
def _jsonable(value: Any) -> Any:
    """Tuples, numpy arrays and scalars -> lists, floats and ints (for JSON)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    return value


@dataclass(frozen=True)
class FitReport:
    """What a scene-fitted model measured on a scene: enough to apply it again, and to explain it.

    Attributes:
        method: Registered name of the model (``"cva"``, ``"irmad"``).
        in_channels: Number of bands the model was fitted on.
        parameters: The fitted parameters: name -> list of floats (or list of lists).
        scale: Native statistic value that maps to score 0.5 (score = s / (s + scale)).
        threshold: The change threshold in score units (change where score > threshold).
        threshold_native: The same threshold in the statistic's native units.
        threshold_method: How the threshold was found (``"otsu"``, ``"chi2"``, ``"otsu-histogram"``).
        statistic: What the native statistic is, in words.
        options: The model's keyword options (rebuilds the same model: ``for_scene``).
        thresholds: Alternative automatic thresholds: name -> ``{"native": t, "score": s}``.
        iterations: Iterations of the fit (1 for a closed-form fit).
        converged: Whether an iterative fit converged within its iteration cap.
        correlations: Canonical correlations (IR-MAD), ascending; empty otherwise.
        dropped_bands: ``{"band": index, "reason": text}`` per band left out.
        n_samples: Number of pixels the parameters were fitted on.
        change_fraction: Fraction of those pixels above the threshold (None when unknown).
        notes: Anything else worth knowing about the fit (regularisation, warnings).
        format: Version of this layout.
    """

    method: str
    in_channels: int
    parameters: Mapping[str, Any]
    scale: float
    threshold: float
    threshold_native: float
    threshold_method: str
    statistic: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)
    thresholds: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    iterations: int = 1
    converged: bool = True
    correlations: tuple[float, ...] = ()
    dropped_bands: tuple[Mapping[str, Any], ...] = ()
    n_samples: int = 0
    change_fraction: float | None = None
    notes: tuple[str, ...] = ()
    format: int = REPORT_FORMAT

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (lists, floats, ints, strings)."""
        return _jsonable(asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FitReport:
        """The report :meth:`to_dict` wrote (unknown keys are refused, missing optional ones default)."""
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown FitReport fields {sorted(unknown)}")
        if int(data.get("format", REPORT_FORMAT)) > REPORT_FORMAT:
            raise ValueError(f"FitReport format {data['format']} is newer than this code's ({REPORT_FORMAT})")
        d = dict(data)
        d["correlations"] = tuple(float(c) for c in d.get("correlations", ()))
        d["dropped_bands"] = tuple(dict(b) for b in d.get("dropped_bands", ()))
        d["notes"] = tuple(d.get("notes", ()))
        d["parameters"] = dict(d["parameters"])
        d["options"] = dict(d.get("options", {}))
        d["thresholds"] = {k: dict(v) for k, v in d.get("thresholds", {}).items()}
        for k in ("scale", "threshold", "threshold_native", "change_fraction"):
            if d.get(k) is not None:
                d[k] = float(d[k])
        return cls(**d)

    def with_threshold(self, score: float, method: str) -> FitReport:
        """The same fit with another threshold, given in score units (the scale stays)."""
        return replace(self, threshold=float(score), threshold_native=native_from_score(score, self.scale),
                       threshold_method=method, change_fraction=None)


def score_from_native(native: np.ndarray | float, scale: float) -> np.ndarray | float:
    """Score ``s / (s + scale)`` of native statistic values (``inf`` -> 1)."""
    s = np.asarray(native, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(np.isposinf(s), 1.0, s / (s + scale))
    return float(out) if out.ndim == 0 else out


def native_from_score(score: np.ndarray | float, scale: float) -> np.ndarray | float:
    """Inverse of :func:`score_from_native` (score 1 -> ``inf``)."""
    p = np.asarray(score, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(p >= 1, np.inf, scale * p / (1 - p))
    return float(out) if out.ndim == 0 else out


# ------------------------------------------------------------------------------ torch helpers
@contextlib.contextmanager
def _no_autocast(device: torch.device) -> Iterator[None]:
    """Autocast off on ``device`` (a no-op where the device type has no autocast)."""
    try:
        ctx = torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:  # a device type autocast does not know
        ctx = contextlib.nullcontext()
    with ctx:
        yield


def compute_dtype(device: torch.device) -> torch.dtype:
    """float64, except on devices without it (Apple MPS): float32."""
    return torch.float32 if device.type == "mps" else torch.float64


def local_mean(stat: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean of the finite values of ``stat`` ``(B, H, W)`` over each ``(2r+1)^2`` window; NaN stays NaN.

    Windows are cut at the image edge (the mean of the pixels inside), so a pixel's value
    depends only on the pixels within ``radius`` of it.
    """
    if radius <= 0:
        return stat
    valid = torch.isfinite(stat)
    k = 2 * radius + 1
    num = F.avg_pool2d(torch.where(valid, stat, torch.zeros_like(stat))[:, None], k, stride=1, padding=radius,
                       count_include_pad=True)[:, 0]
    den = F.avg_pool2d(valid.to(stat.dtype)[:, None], k, stride=1, padding=radius, count_include_pad=True)[:, 0]
    out = num / den
    return torch.where(valid, out, torch.full_like(out, float("nan")))


# ----------------------------------------------------------------------------- band screening
def constant_bands(x: np.ndarray, rel_tol: float = 1e-7) -> list[int]:
    """Bands of ``x`` ``(N, C)`` whose standard deviation is 0 or below ``rel_tol`` of their magnitude."""
    std = x.std(axis=0)
    mag = np.abs(x).max(axis=0)
    return [int(c) for c in np.flatnonzero((std == 0) | (std <= rel_tol * mag))]


def collinear_bands(x: np.ndarray, candidates: Sequence[int], tol: float = 1e-8) -> dict[int, list[int]]:
    """Bands (in order) that earlier kept bands explain almost perfectly: ``1 - R^2 < tol``.

    Returns:
        band -> the kept bands it is a linear combination of.
    """
    xc = x[:, list(candidates)] - x[:, list(candidates)].mean(axis=0)
    cov = xc.T @ xc / len(xc)
    d = np.sqrt(np.diag(cov))
    corr = cov / np.outer(d, d)
    kept: list[int] = []
    out: dict[int, list[int]] = {}
    for j in range(len(candidates)):
        if kept:
            r = corr[j, kept]
            resid = 1.0 - float(r @ np.linalg.lstsq(corr[np.ix_(kept, kept)], r, rcond=None)[0])
            if resid < tol:
                out[int(candidates[j])] = [int(candidates[k]) for k in kept]
                continue
        kept.append(j)
    return out


# --------------------------------------------------------------------------------- base class
@dataclass
class _Fitted:
    """What a subclass's parameter fit returns to :meth:`SceneFittedModel.fit`."""

    parameters: dict[str, Any]
    dropped: list[dict[str, Any]] = field(default_factory=list)
    iterations: int = 1
    converged: bool = True
    correlations: tuple[float, ...] = ()
    notes: list[str] = field(default_factory=list)


class SceneFittedModel(ChangeModel):
    """Base of the training-free models fitted to each scene (see the module's docstring).

    Subclasses set ``method`` and ``statistic_doc`` and implement ``_fit_parameters`` (numpy,
    float64), ``_statistic`` (torch, per pixel) and ``_buffer_names``; they may add native
    thresholds in ``_extra_thresholds`` and choose among them with the ``threshold`` option.

    Args:
        in_channels: Number of bands.
        smooth_radius: Radius of the local mean of the statistic (0: none; see the module).
        bins: Bins of the histogram Otsu's threshold is taken over.
        num_classes: Must be 1 (the output is one score channel).
    """

    kind: ClassVar[str] = "scene-fitted"
    #: Raw pixel values in (any dtype, on the model's device): the fitted parameters are in raw units.
    takes_raw: ClassVar[bool] = True
    method: ClassVar[str] = ""
    statistic_doc: ClassVar[str] = ""
    _buffer_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, in_channels: int = 3, *, smooth_radius: int = 0, bins: int = 1024, num_classes: int = 1,
                 **options: Any) -> None:
        if num_classes != 1:
            raise ValueError(f"{type(self).__name__} outputs one change score (num_classes=1), got {num_classes}")
        super().__init__(1)
        if isinstance(in_channels, bool) or not isinstance(in_channels, Integral) or in_channels < 1:
            raise ValueError(f"in_channels must be a positive integer, got {in_channels!r}")
        if not 0 <= int(smooth_radius) < 64:
            raise ValueError(f"smooth_radius must be in 0..63 (the pipeline's halo is 64 px), got {smooth_radius}")
        self.in_channels = int(in_channels)
        self.smooth_radius = int(smooth_radius)
        self.bins = int(bins)
        self.options: dict[str, Any] = {"smooth_radius": self.smooth_radius, "bins": self.bins, **options}
        self.report: FitReport | None = None

    # ---------------------------------------------------------------------------- fitting
    def fit(self, before: np.ndarray, after: np.ndarray, valid: np.ndarray | None = None) -> FitReport:
        """Fit the parameters and the automatic threshold to a scene's pixels.

        Args:
            before: ``(N, C)`` raw values of the sample's valid pixels (any dtype), or a whole
                image ``(H, W, C)``: then, with ``smooth_radius > 0``, the threshold is Otsu's
                over the smoothed statistic, as the map will have it.
            after: The same pixels at the second date, same shape.
            valid: Optional boolean mask ``(N,)`` or ``(H, W)`` of the pixels to use. Rows with a
                non-finite value are left out in any case.

        Returns:
            The :class:`FitReport`; ``for_scene(report)`` applies it.
        """
        b = np.asarray(before)
        a = np.asarray(after)
        if b.shape != a.shape or b.ndim not in (2, 3):
            raise ValueError(f"before and after must be (N, C) or (H, W, C) arrays of one shape, got {b.shape} and {a.shape}")
        if b.shape[-1] != self.in_channels:
            raise ValueError(f"{self.method} was built for {self.in_channels} bands, the pixels have {b.shape[-1]}")
        image_shape = b.shape[:2] if b.ndim == 3 else None
        x = b.reshape(-1, b.shape[-1]).astype(np.float64)
        y = a.reshape(-1, a.shape[-1]).astype(np.float64)
        keep = np.isfinite(x).all(axis=1) & np.isfinite(y).all(axis=1)
        if valid is not None:
            keep &= np.asarray(valid, dtype=bool).reshape(-1)
        n = int(keep.sum())
        if n < 2 * self.in_channels + 2:
            raise ValueError(f"{self.method} needs at least {2 * self.in_channels + 2} valid pixels to fit, got {n}")
        fitted = self._fit_parameters(x[keep], y[keep])
        provisional = self._scene_model(fitted.parameters, scale=1.0)
        if image_shape is not None and self.smooth_radius > 0:
            xs, ys = x.copy(), y.copy()
            xs[~keep] = np.nan
            ys[~keep] = np.nan
            pair = np.stack([xs, ys]).reshape(2, *image_shape, -1).transpose(0, 3, 1, 2)[None]
            stat = provisional.native_statistic(torch.from_numpy(np.ascontiguousarray(pair)))[0].numpy().reshape(-1)
            stat = stat[keep]
            basis = "the smoothed statistic of the image"
        else:
            stat = provisional.native_statistic_pixels(x[keep], y[keep])
            basis = "the per-pixel statistic" + (" (smooth_radius > 0: refine with threshold_from_histogram over the "
                                                 "scene's smoothed scores)" if self.smooth_radius > 0 else "")
        natives = {"otsu": otsu_threshold(stat, bins=self.bins)}
        natives.update(self._extra_thresholds(fitted))
        choice = str(self.options.get("threshold", "otsu"))
        if choice not in natives:
            raise ValueError(f"unknown threshold {choice!r}; choose one of {', '.join(natives)}")
        scale = float(natives[choice])
        if not (math.isfinite(scale) and scale > 0):  # e.g. identical images: a statistic of 0 everywhere
            fitted.notes.append(f"the {choice} threshold {scale!r} is not a positive number; the scale is set to 1")
            scale = 1.0
        thresholds = {k: {"native": float(v), "score": float(score_from_native(v, scale)),
                          "change_fraction": float(np.mean(stat > v))} for k, v in natives.items()}
        notes = [f"thresholds computed over {basis}", *fitted.notes]
        return FitReport(
            method=self.method, in_channels=self.in_channels, parameters=_jsonable(fitted.parameters), scale=scale,
            threshold=0.5, threshold_native=scale, threshold_method=choice, statistic=self.statistic_doc,
            options=_jsonable(self.options), thresholds=thresholds, iterations=fitted.iterations,
            converged=fitted.converged, correlations=tuple(float(c) for c in fitted.correlations),
            dropped_bands=tuple(fitted.dropped), n_samples=n, change_fraction=float(np.mean(stat > scale)),
            notes=tuple(notes))

    def for_scene(self, report: FitReport) -> SceneFittedModel:
        """A model applying ``report``'s parameters (buffers), in eval mode, on this model's device."""
        if report.method != self.method:
            raise ValueError(f"a {report.method!r} fit cannot be applied by a {self.method!r} model")
        options = dict(report.options)
        model = type(self)(in_channels=report.in_channels, **options)
        model._load(report.parameters, report.scale)
        model.report = report
        device = next(iter(self.buffers()), torch.empty(0)).device
        return model.to(device).eval()

    def _scene_model(self, parameters: Mapping[str, Any], scale: float) -> SceneFittedModel:
        model = type(self)(in_channels=self.in_channels, **self.options)
        model._load(parameters, scale)
        return model

    def _load(self, parameters: Mapping[str, Any], scale: float) -> None:
        self._parameters_json = _jsonable(dict(parameters))
        for name in self._buffer_names:
            self.register_buffer(name, torch.tensor(np.asarray(parameters[name], dtype=np.float64)))
        self._scale_value = float(scale)
        self.register_buffer("scale", torch.tensor(float(scale), dtype=torch.float64))

    @property
    def fitted(self) -> bool:
        """Whether this instance holds fitted parameters (made by :meth:`for_scene`)."""
        return hasattr(self, "_parameters_json")

    def _params(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The buffers in the compute dtype on ``device`` (rebuilt from the fit if someone cast them)."""
        if not self.fitted:
            raise RuntimeError(f"{type(self).__name__} is scene-fitted and has no parameters yet: call "
                               "report = model.fit(before, after), then model.for_scene(report)")
        dtype = compute_dtype(device)
        out = {}
        for name in (*self._buffer_names, "scale"):
            buf = getattr(self, name)
            if buf.dtype != torch.float64:  # e.g. model.half(): the JSON copy is exact
                value = self._parameters_json[name] if name != "scale" else self._scale_value
                buf = torch.tensor(np.asarray(value, dtype=np.float64))
            out[name] = buf.to(device=device, dtype=dtype)
        return out

    # ------------------------------------------------------------------------- applying
    def native_statistic(self, x: torch.Tensor, smooth: bool = True) -> torch.Tensor:
        """The change statistic in native units, ``(B, H, W)`` in the compute dtype, of raw ``(B, 2, C, H, W)``."""
        if x.ndim != 5 or x.shape[1] != 2 or x.shape[2] != self.in_channels:
            raise ValueError(f"expected (B, 2, {self.in_channels}, H, W) raw values, got {tuple(x.shape)}")
        with _no_autocast(x.device):
            params = self._params(x.device)
            dtype = compute_dtype(x.device)
            # window by window: the compute dtype's copies of a batch (13 bands of float64) would
            # hold gigabytes on a CPU actor with several lanes
            stat = torch.cat([self._statistic(x[i:i + 1].to(dtype), params)
                              for i in range(x.shape[0])]) if x.shape[0] else x.new_zeros((0, *x.shape[3:]), dtype=dtype)
            if smooth and self.smooth_radius:
                stat = local_mean(stat, self.smooth_radius)
        return stat

    def native_statistic_pixels(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        """The per-pixel statistic (float64, never smoothed: no neighbours) of ``(N, C)`` arrays."""
        x = torch.from_numpy(np.stack([np.asarray(before, np.float64), np.asarray(after, np.float64)]))
        x = x.permute(0, 2, 1)[None, :, :, None, :]  # (1, 2, C, 1, N)
        out = []
        step = 1 << 20
        for i in range(0, x.shape[-1], step):
            out.append(self.native_statistic(x[..., i:i + step], smooth=False)[0, 0].numpy())
        return np.concatenate(out) if out else np.zeros(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The change score ``(B, 1, H, W)`` float32 in 0..1 of raw values ``(B, 2, C, H, W)``."""
        if x.ndim != 5 or x.shape[1] != 2:
            raise ValueError(f"expected a (B, 2, C, H, W) tensor of before/after images, got shape {tuple(x.shape)}")
        return self._score(x)

    def forward_pair(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """The change score ``(B, 1, H, W)`` float32 in 0..1: ``s / (s + scale)`` (see the module)."""
        return self._score(torch.stack([before, after], dim=1))

    def _score(self, x: torch.Tensor) -> torch.Tensor:
        stat = self.native_statistic(x)
        with _no_autocast(stat.device):
            scale = self._params(stat.device)["scale"]
            score = torch.where(torch.isposinf(stat), torch.ones_like(stat), stat / (stat + scale))
        return score.float()[:, None]

    def change_probability(self, logits: torch.Tensor) -> torch.Tensor:
        """The score, ``(B, 1, H, W)`` -> ``(B, H, W)``, unchanged (it is already in 0..1)."""
        return logits[:, 0]

    # ----------------------------------------------------------- thresholds over a scene
    def score_from_native(self, native: np.ndarray | float) -> np.ndarray | float:
        """Native statistic -> score with this fit's scale."""
        return score_from_native(native, self._fitted_scale())

    def native_from_score(self, score: np.ndarray | float) -> np.ndarray | float:
        """Score -> native statistic with this fit's scale."""
        return native_from_score(score, self._fitted_scale())

    def threshold_from_histogram(self, counts: np.ndarray, edges: np.ndarray) -> float:
        """Otsu's threshold, in score units, from a histogram of *scores* accumulated over a scene.

        Otsu is computed over the native statistic (each bin stands for the native value of its
        middle score), as :meth:`fit` does: Otsu over the scores themselves differs, and was
        measured to be much worse. Use it with ``smooth_radius > 0``, where ``fit`` on
        ``(N, C)`` pixels cannot see the smoothed statistic; fine bins (>= 1024 over 0..1) keep
        the bins narrow in native units. Then ``report.with_threshold(t, "otsu-histogram")``.
        """
        edges = np.asarray(edges, dtype=np.float64)
        centers = self.native_from_score(np.clip((edges[:-1] + edges[1:]) / 2, 0.0, 1.0 - 1e-9))
        return otsu_from_histogram(counts, edges, centers=centers)

    def _fitted_scale(self) -> float:
        if not self.fitted:
            raise RuntimeError("no fit: call for_scene(report) first")
        return self._scale_value

    # --------------------------------------------------------------------- subclass hooks
    def _fit_parameters(self, x: np.ndarray, y: np.ndarray) -> _Fitted:
        raise NotImplementedError

    def _statistic(self, pair: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """The native statistic ``(B, H, W)`` of ``pair`` ``(B, 2, C, H, W)`` in the compute dtype."""
        raise NotImplementedError

    def _extra_thresholds(self, fitted: _Fitted) -> dict[str, float]:
        return {}
