"""IR-MAD: iteratively reweighted multivariate alteration detection (A. A. Nielsen, IEEE TIP 16(2), 2007).

Canonical correlation analysis (CCA) of the two dates' band vectors ``x`` and ``y`` finds
pairs of linear combinations ``U_i = a_i . (x - mu_x)``, ``V_i = b_i . (y - mu_y)`` of unit
variance, mutually uncorrelated across pairs, with correlations ``rho_1 <= ... <= rho_p``
(ascending, so ``MAD_1`` is Nielsen's ``U_p - V_p``, the least correlated pair). The MAD
variates ``MAD_i = U_i - V_i`` are uncorrelated with variances ``2 (1 - rho_i)``; for unchanged
pixels ``Z = sum_i MAD_i^2 / (2 (1 - rho_i))`` is about chi-square with ``p`` degrees of
freedom. Each iteration weights every pixel by its no-change probability
``1 - chi2.cdf(Z, p)`` from the previous one, so the CCA is fitted to the unchanged pixels
(invariant to any affine transformation of either date's bands). Iterations stop when the
canonical correlations move less than ``tol``, or after ``max_iter``.

The sign of each pair is chosen so that ``U_i`` and ``V_i`` are positively correlated (the
singular values of the whitened cross-covariance are >= 0), and then so that ``U_i`` is
positively correlated with the sum of the standardised before bands (a convention: it fixes
the sign of ``MAD_i``, not ``Z``).

Constant bands (at either date) and bands that are a linear combination of others (``1 - R^2
< collinear_tol`` at either date) are left out, at both dates, and reported; a small ridge
(``ridge`` times the mean variance) on both covariance matrices keeps nearly collinear bands
from making the whitening ill-conditioned.
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from models.fitting import SceneFittedModel, _Fitted, _no_autocast, collinear_bands, constant_bands
from models.registry import register_model

_STATISTICS = ("chi", "max")


class IRMAD(SceneFittedModel):
    """IR-MAD change detector fitted per scene (see the module's docstring).

    The native statistic ``s`` is, with ``statistic="chi"`` (default), ``sqrt(Z)``: the length
    of the vector of standardised MAD variates (a Mahalanobis distance of the pixel's change
    from no change); with ``"max"``, ``max_i |MAD_i| / sigma_i``. The score is ``s / (s + T)``
    with ``T`` the chosen automatic threshold of ``s``: ``"otsu"`` (default), Otsu's threshold
    over the fitted pixels, or ``"chi2"``, the no-change test at level ``alpha``
    (``chi2.cdf(Z, p) > alpha``; for ``"max"``, ``P(max_i |N(0,1)| <= s) > alpha``). Both are
    always in the report's ``thresholds``.

    Args:
        in_channels: Number of bands.
        statistic: ``"chi"`` or ``"max"``.
        threshold: ``"otsu"`` or ``"chi2"``.
        alpha: Level of the chi-square no-change test.
        max_iter: Iteration cap.
        tol: Convergence: the largest change of a canonical correlation between iterations.
        ridge: Ridge added to the covariance matrices, relative to their mean variance.
        collinear_tol: A band is collinear when ``1 - R^2`` on the bands before it is below this.
        min_effective: Iterations stop, keeping the last fit, when the no-change weights' effective
            sample ``(sum w)^2 / sum w^2`` would fall below this (default ``10 * 2p``, ten pixels per
            variable of the joint covariance). Where nearly the whole scene changed (seasons), the
            reweighting otherwise narrows onto a handful of pixels and every correlation tends to 1.
        smooth_radius: Local mean of ``s`` over ``(2r+1)^2`` pixels before the score (0: none).
        bins: Histogram bins for Otsu.
        num_classes: Must be 1.
    """

    method: ClassVar[str] = "irmad"
    _buffer_names: ClassVar[tuple[str, ...]] = ("mean_before", "mean_after", "a", "b", "sigma")

    def __init__(self, in_channels: int = 3, statistic: str = "chi", threshold: str = "otsu", alpha: float = 0.99,
                 max_iter: int = 50, tol: float = 1e-4, ridge: float = 1e-9, collinear_tol: float = 1e-8,
                 min_effective: int | None = None, smooth_radius: int = 0, bins: int = 1024, num_classes: int = 1,
                 **kw: Any) -> None:
        if kw:
            raise TypeError(f"IRMAD got unknown options {sorted(kw)}")
        if statistic not in _STATISTICS:
            raise ValueError(f"unknown IR-MAD statistic {statistic!r}; choose one of {', '.join(_STATISTICS)}")
        if threshold not in ("otsu", "chi2"):
            raise ValueError(f"unknown IR-MAD threshold {threshold!r}; choose otsu or chi2")
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        if int(max_iter) < 1:
            raise ValueError(f"max_iter must be >= 1, got {max_iter}")
        super().__init__(in_channels, smooth_radius=smooth_radius, bins=bins, num_classes=num_classes,
                         statistic=statistic, threshold=threshold, alpha=float(alpha), max_iter=int(max_iter),
                         tol=float(tol), ridge=float(ridge), collinear_tol=float(collinear_tol),
                         min_effective=None if min_effective is None else int(min_effective))
        self.statistic = statistic

    @property
    def statistic_doc(self) -> str:  # noqa: D102
        if self.statistic == "max":
            return "IR-MAD max_i |MAD_i| / sigma_i (largest standardised MAD variate)"
        return "IR-MAD sqrt(Z), Z = sum_i (MAD_i / sigma_i)^2 (~ chi-square(p) for no-change pixels)"

    # --------------------------------------------------------------------------- fit
    def _screen(self, x: np.ndarray, y: np.ndarray) -> tuple[list[int], list[dict[str, Any]]]:
        """Bands kept, and those dropped with the reason."""
        dropped: dict[int, str] = {}
        for name, data in (("before", x), ("after", y)):
            for c in constant_bands(data):
                dropped.setdefault(c, f"constant in the {name} image")
        for name, data in (("before", x), ("after", y)):
            kept = [c for c in range(x.shape[1]) if c not in dropped]
            if len(kept) > 1:
                for c, others in collinear_bands(data, kept, self.options["collinear_tol"]).items():
                    dropped.setdefault(c, f"collinear with bands {others} in the {name} image")
        kept = [c for c in range(x.shape[1]) if c not in dropped]
        return kept, [{"band": c, "reason": r} for c, r in sorted(dropped.items())]

    def _fit_parameters(self, x: np.ndarray, y: np.ndarray) -> _Fitted:
        from scipy.linalg import cholesky
        from scipy.special import gammaincc

        kept, dropped = self._screen(x, y)
        if not kept:
            raise ValueError("IR-MAD: no usable band (all constant or collinear): " + "; ".join(
                f"band {d['band']}: {d['reason']}" for d in dropped))
        d = np.hstack([x[:, kept], y[:, kept]])
        center = d.mean(axis=0)
        d -= center  # centred once: the weighted moments below then lose no digits to large means
        n, p = d.shape[0], len(kept)
        ridge, tol = self.options["ridge"], self.options["tol"]
        min_eff = self.options["min_effective"] if self.options["min_effective"] is not None else 10 * 2 * p
        w = np.ones(n)
        prev = None
        converged = False
        notes: list[str] = []
        it = 0
        for it in range(1, self.options["max_iter"] + 1):
            sw = w.sum()
            if not sw > 1e-9 * n:
                notes.append(f"iteration {it}: the no-change weights vanished; the previous fit is kept")
                it -= 1
                break
            m = w @ d / sw
            s = _weighted_products(d, w) / sw - np.outer(m, m)
            s = (s + s.T) / 2
            s11, s22, s12 = s[:p, :p].copy(), s[p:, p:].copy(), s[:p, p:]
            s11[np.diag_indices(p)] += ridge * np.trace(s11) / p
            s22[np.diag_indices(p)] += ridge * np.trace(s22) / p
            # whitening: with S11 = L1 L1', S22 = L2 L2', the SVD of L1^-1 S12 L2^-T gives the pairs
            try:
                w1, w2 = np.linalg.inv(cholesky(s11, lower=True)), np.linalg.inv(cholesky(s22, lower=True))
            except np.linalg.LinAlgError:
                if it == 1:
                    raise ValueError("IR-MAD: the covariance matrices are singular even with the ridge") from None
                notes.append(f"iteration {it}: singular weighted covariance; the previous fit is kept")
                it -= 1
                break
            k = w1 @ s12 @ w2.T
            u, sv, vt = np.linalg.svd(k)
            order = np.argsort(sv, kind="stable")
            u, sv, vt = u[:, order], sv[order], vt[order]
            a, b = w1.T @ u, w2.T @ vt.T
            flip = np.sign((s11 @ a / np.sqrt(np.diag(s11))[:, None]).sum(axis=0))
            flip[flip == 0] = 1.0
            a, b = a * flip, b * flip
            rho = np.clip(sv, 0.0, 1.0)
            fit = (center[:p] + m[:p], center[p:] + m[p:], a, b, rho)
            if prev is not None and np.max(np.abs(rho - prev)) < tol:
                converged = True
                break
            prev = rho
            if it == self.options["max_iter"]:
                break
            sigma = np.sqrt(np.maximum(2.0 * (1.0 - rho), 1e-12))
            proj = np.vstack([a, -b]) / sigma
            z = _chi_squares(d, proj, m @ proj)
            w = gammaincc(p / 2.0, z / 2.0)  # no-change probability 1 - chi2.cdf(z, p)
            n_eff = w.sum() ** 2 / max(float((w * w).sum()), 1e-300)
            if not n_eff >= min_eff:
                notes.append(f"stopped after iteration {it}: the next weights' effective sample ({n_eff:.0f} pixels) fell "
                             f"below {min_eff} (10 per variable); most of the scene may have changed")
                break
        mx, my, a, b, rho = fit
        c = x.shape[1]
        a_full, b_full = np.zeros((c, p)), np.zeros((c, p))
        a_full[kept], b_full[kept] = a, b
        mean_x, mean_y = x.mean(axis=0), y.mean(axis=0)
        mean_x[kept], mean_y[kept] = mx, my
        if not converged:
            notes.append(f"not converged after {it} iterations (canonical correlations still moved >= {tol})")
        notes.append(f"ridge {ridge:g} x mean variance on both covariance matrices; MAD variances 2 (1 - rho)")
        params = {"mean_before": mean_x, "mean_after": mean_y, "a": a_full, "b": b_full,
                  "sigma": np.sqrt(np.maximum(2.0 * (1.0 - rho), 1e-12)), "bands": kept}
        return _Fitted(params, dropped=dropped, iterations=it, converged=converged, correlations=tuple(rho), notes=notes)

    def _extra_thresholds(self, fitted: _Fitted) -> dict[str, float]:
        from scipy.special import gammaincinv, ndtri  # (scipy.stats takes seconds to import)

        p = len(fitted.parameters["sigma"])
        alpha = self.options["alpha"]
        if self.statistic == "max":  # P(max_i |N(0, 1)| <= t) = (2 Phi(t) - 1)^p
            return {"chi2": float(ndtri((1 + alpha ** (1 / p)) / 2))}
        return {"chi2": float(np.sqrt(2 * gammaincinv(p / 2, alpha)))}  # chi2.ppf(alpha, p) = 2 P^-1(p/2, alpha)

    # ------------------------------------------------------------------------ apply
    def _mad(self, pair: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Standardised MAD variates ``(B, p, H, W)`` of ``pair`` ``(B, 2, C, H, W)``: one matrix product per window.

        ``MAD_i / sigma_i = sum_c x_c a_ci / sigma_i - y_c b_ci / sigma_i - offset_i``, the means
        folded into the offset and dropped bands given weight 0; a pixel's result depends on its
        own values only (float64: the sums' rounding, 1e-16 relative, is far below any threshold).
        """
        a, b, sigma = params["a"], params["b"], params["sigma"]
        kept = self._parameters_json["bands"]
        p = sigma.shape[0]
        used = torch.zeros(a.shape[0], 1, dtype=a.dtype, device=a.device)
        used[kept] = 1.0
        weights = (torch.cat([a * used, -b * used]) / sigma).T.contiguous()  # (p, 2C)
        offset = ((params["mean_before"] * used[:, 0]) @ a - (params["mean_after"] * used[:, 0]) @ b) / sigma
        bsz, _, c, h, w = pair.shape
        out = []
        for i in range(bsz):
            mad = weights @ pair[i].reshape(2 * c, h * w)  # (p, h*w)
            out.append(mad.sub_(offset[:, None]).view(p, h, w))
        return torch.stack(out)

    def _statistic(self, pair: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        mad = self._mad(pair, params)
        if self.statistic == "max":
            return mad.abs().amax(dim=1)
        return torch.linalg.vector_norm(mad, dim=1)

    def mad_variates(self, x: torch.Tensor) -> torch.Tensor:
        """The standardised MAD variates ``MAD_i / sigma_i`` (ascending rho), ``(B, p, H, W)``, of raw ``(B, 2, C, H, W)``."""
        with _no_autocast(x.device):
            params = self._params(x.device)
            return self._mad(x.to(params["a"].dtype), params)


_CHUNK = 1 << 16  # rows of the sample per product: its copies stay in the CPU's cache (twice as fast as one product)


def _weighted_products(d: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``sum_n w_n d_n d_n^T``, chunk by chunk."""
    out = np.zeros((d.shape[1], d.shape[1]))
    for i in range(0, len(d), _CHUNK):
        part = d[i:i + _CHUNK]
        out += (part * w[i:i + _CHUNK, None]).T @ part
    return out


def _chi_squares(d: np.ndarray, proj: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """``|d_n proj - offset|^2`` per row (the chi-square distance of the standardised MAD variates), chunk by chunk."""
    z = np.empty(len(d))
    for i in range(0, len(d), _CHUNK):
        mad = d[i:i + _CHUNK] @ proj - offset
        z[i:i + _CHUNK] = np.einsum("ij,ij->i", mad, mad)
    return z


@register_model("irmad", description="IR-MAD: iteratively reweighted multivariate alteration detection (Nielsen 2007) "
                                     "+ Otsu, fitted per scene (training-free)", kind="scene-fitted")
def irmad(in_channels: int = 3, smooth_radius: int = 2, **kw: Any) -> IRMAD:
    """IR-MAD (scene-fitted)."""
    return IRMAD(in_channels=in_channels, smooth_radius=smooth_radius, **kw)
