"""Scene-fitted CVA and IR-MAD: against an independent numpy/scipy reference on a real Landsat pair, and their contract."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from models.cva import CVA
from models.fitting import FitReport, otsu_from_histogram, otsu_threshold
from models.irmad import IRMAD
from tests.conftest import SHARED_DATA, require

TAIZHOU = SHARED_DATA / "landsat-taizhou"


# ------------------------------------------------------------------------------ data
@pytest.fixture(scope="module")
def taizhou() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Landsat-7 Taizhou 2000 / 2003: before, after (6, 400, 400) uint8 and the label (0, 1, 255)."""
    import rasterio

    require(TAIZHOU / "A.tif")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        read = [rasterio.open(TAIZHOU / f"{n}.tif").read() for n in ("A", "B", "label")]
    return read[0], read[1], read[2][0]


def pixels(img: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (H * W, C)."""
    return img.reshape(img.shape[0], -1).T


def pair_tensor(before: np.ndarray, after: np.ndarray) -> torch.Tensor:
    """(C, H, W) pair -> raw float32 (1, 2, C, H, W)."""
    return torch.from_numpy(np.stack([before, after]).astype(np.float32))[None]


def scores(model, before: np.ndarray, after: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.change_probability(model(pair_tensor(before, after)))[0].numpy()


# ---------------------------------------------------------------- independent reference
def ref_otsu(values: np.ndarray, bins: int = 1024) -> tuple[float, float]:
    """Plain Otsu: try every split of the histogram; returns (threshold, bin width)."""
    v = values[np.isfinite(values)].astype(np.float64)
    counts, edges = np.histogram(v, bins=bins, range=(v.min(), v.max()))
    centers = (edges[:-1] + edges[1:]) / 2
    best, best_k = -1.0, 0
    for k in range(1, bins):
        n0, n1 = counts[:k].sum(), counts[k:].sum()
        if n0 == 0 or n1 == 0:
            continue
        m0 = (counts[:k] * centers[:k]).sum() / n0
        m1 = (counts[k:] * centers[k:]).sum() / n1
        between = n0 * n1 * (m0 - m1) ** 2
        if between > best:
            best, best_k = between, k
    return float(edges[best_k]), float(edges[1] - edges[0])


def ref_cva(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    zx = (x - x.mean(axis=0)) / x.std(axis=0)
    zy = (y - y.mean(axis=0)) / y.std(axis=0)
    return np.linalg.norm(zy - zx, axis=1) / np.sqrt(x.shape[1])


def ref_irmad(x: np.ndarray, y: np.ndarray, max_iter: int = 50, tol: float = 1e-4):
    """IR-MAD the textbook way: the generalised eigenproblem S12 S22^-1 S21 a = rho^2 S11 a."""
    from scipy.linalg import eigh
    from scipy.stats import chi2

    n, p = x.shape
    w = np.ones(n)
    old = None
    for it in range(1, max_iter + 1):
        mx = (w[:, None] * x).sum(axis=0) / w.sum()
        my = (w[:, None] * y).sum(axis=0) / w.sum()
        xc, yc = x - mx, y - my
        s11 = (w[:, None] * xc).T @ xc / w.sum()
        s22 = (w[:, None] * yc).T @ yc / w.sum()
        s12 = (w[:, None] * xc).T @ yc / w.sum()
        lam, a = eigh(s12 @ np.linalg.inv(s22) @ s12.T, s11)  # ascending, a' S11 a = 1
        rho = np.sqrt(lam)
        b = np.linalg.inv(s22) @ s12.T @ a / rho  # V = Y b has unit variance and corr(U, V) = rho > 0
        for i in range(p):  # convention: U_i positively correlated with the sum of the standardised X bands
            if (s11 @ a[:, i] / np.sqrt(np.diag(s11))).sum() < 0:
                a[:, i], b[:, i] = -a[:, i], -b[:, i]
        mad = xc @ a - yc @ b
        z = (mad ** 2 / (2 * (1 - rho))).sum(axis=1)
        if old is not None and np.abs(rho - old).max() < tol:
            break
        old = rho
        w = 1 - chi2.cdf(z, p)
    return dict(iterations=it, rho=rho, a=a, b=b, mean_before=mx, mean_after=my, chi=np.sqrt(z), mad=mad)


@pytest.fixture(scope="module")
def cva_fit(taizhou):
    before, after, _ = taizhou
    report = CVA(6).fit(pixels(before), pixels(after))
    return report, CVA(6).for_scene(report)


@pytest.fixture(scope="module")
def irmad_fit(taizhou):
    before, after, _ = taizhou
    x, y = pixels(before).astype(np.float64), pixels(after).astype(np.float64)
    model = IRMAD(6)
    report = model.fit(pixels(before), pixels(after))
    return report, model.for_scene(report), ref_irmad(x, y)


# ------------------------------------------------------------------------------- Otsu
def test_otsu_finds_the_valley_of_a_bimodal_mixture():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0, 1, 70_000), rng.normal(10, 1.5, 30_000), [np.nan] * 100])
    t = otsu_threshold(values)
    assert 3.0 < t < 6.0  # the densities cross near 4.5; the modes' tails are at ~3 and ~6
    counts, edges = np.histogram(values[np.isfinite(values)], bins=1024)
    assert otsu_from_histogram(counts, edges) == pytest.approx(t)
    # empty bins between two spikes tie: the threshold is the middle of the valley
    assert otsu_threshold(np.array([0.0] * 50 + [10.0] * 50), bins=100) == pytest.approx(5.0, abs=0.1)
    assert otsu_threshold(np.full(10, 3.0)) == 3.0
    with pytest.raises(ValueError):
        otsu_threshold(np.array([np.nan]))


def test_otsu_from_a_histogram_with_unequal_bins_equals_the_plain_one():
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.gamma(2, 1, 50_000), rng.normal(15, 2, 5_000)])
    t = otsu_threshold(values, bins=512)
    counts, edges = np.histogram(values, bins=512)
    assert otsu_from_histogram(counts, edges) == pytest.approx(t)
    assert otsu_from_histogram(counts, edges) == pytest.approx(ref_otsu(values, 512)[0], abs=(edges[1] - edges[0]))


# ----------------------------------------------------------------- against the reference
def test_cva_matches_the_numpy_reference(taizhou, cva_fit):
    before, after, label = taizhou
    x, y = pixels(before).astype(np.float64), pixels(after).astype(np.float64)
    report, model = cva_fit
    params = report.parameters
    np.testing.assert_allclose(params["mean_before"], x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(params["std_after"], y.std(axis=0), rtol=1e-12)
    m = ref_cva(x, y)
    t, width = ref_otsu(m)
    assert report.threshold_native == pytest.approx(t, abs=width) and report.threshold == 0.5
    np.testing.assert_allclose(model.native_statistic(pair_tensor(before, after))[0].numpy().ravel(), m, rtol=1e-10)
    s = scores(model, before, after).ravel()
    np.testing.assert_allclose(s, m / (m + report.scale), rtol=1e-5, atol=1e-7)
    assert ((s > 0.5) == (m > t)).mean() > 0.9999  # the same pixels flagged (up to a bin)
    lab = label.ravel()
    pred, truth = (s > report.threshold)[lab != 255], lab[lab != 255] == 1
    f1 = 2 * (pred & truth).sum() / (pred.sum() + truth.sum())
    assert f1 > 0.9  # measured 0.910


def test_irmad_matches_the_numpy_reference(taizhou, irmad_fit):
    before, after, label = taizhou
    report, model, ref = irmad_fit
    assert report.iterations == ref["iterations"] and report.converged and report.dropped_bands == ()
    np.testing.assert_allclose(report.correlations, ref["rho"], rtol=1e-6, atol=1e-7)
    for ours, theirs in (("a", "a"), ("b", "b")):
        got, want = np.asarray(report.parameters[ours]), ref[theirs]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    np.testing.assert_allclose(report.parameters["mean_before"], ref["mean_before"], rtol=1e-7)
    np.testing.assert_allclose(report.parameters["mean_after"], ref["mean_after"], rtol=1e-7)
    np.testing.assert_allclose(report.parameters["sigma"], np.sqrt(2 * (1 - ref["rho"])), rtol=1e-5)
    chi = model.native_statistic(pair_tensor(before, after))[0].numpy().ravel()
    np.testing.assert_allclose(chi, ref["chi"], rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(model.mad_variates(pair_tensor(before, after))[0].numpy().reshape(6, -1).T,
                               ref["mad"] / np.sqrt(2 * (1 - ref["rho"])), rtol=1e-5, atol=1e-5)
    t, width = ref_otsu(ref["chi"])
    assert report.threshold_native == pytest.approx(t, abs=width)
    s = scores(model, before, after).ravel()
    np.testing.assert_allclose(s, ref["chi"] / (ref["chi"] + report.scale), rtol=1e-5, atol=1e-7)
    from scipy.stats import chi2

    assert report.thresholds["chi2"]["native"] == pytest.approx(np.sqrt(chi2.ppf(0.99, 6)))
    lab = label.ravel()
    pred, truth = (s > report.threshold)[lab != 255], lab[lab != 255] == 1
    assert 2 * (pred & truth).sum() / (pred.sum() + truth.sum()) > 0.9  # measured 0.947


def test_canonical_variate_pairs_are_positively_correlated(taizhou, irmad_fit):
    before, after, _ = taizhou
    report, _, _ = irmad_fit
    x, y = pixels(before).astype(np.float64), pixels(after).astype(np.float64)
    u = (x - report.parameters["mean_before"]) @ np.asarray(report.parameters["a"])
    v = (y - report.parameters["mean_after"]) @ np.asarray(report.parameters["b"])
    for i in range(6):
        assert np.corrcoef(u[:, i], v[:, i])[0, 1] > 0
    # inverted contrast: the after bands are a negative affine map of the before bands (plus noise)
    rng = np.random.default_rng(0)
    x = x[::8]
    inverted = 200.0 - 0.5 * x + rng.normal(0, 0.2, x.shape)
    inv_report = IRMAD(6).fit(x, inverted)
    assert min(inv_report.correlations) > 0.5
    u = (x - inv_report.parameters["mean_before"]) @ np.asarray(inv_report.parameters["a"])
    v = (inverted - inv_report.parameters["mean_after"]) @ np.asarray(inv_report.parameters["b"])
    assert all(np.corrcoef(u[:, i], v[:, i])[0, 1] > 0.5 for i in range(6))


# -------------------------------------------------------------------------- degenerate
@pytest.mark.parametrize("cls", [CVA, IRMAD])
def test_constant_and_duplicated_bands_give_no_nan_and_are_reported(taizhou, cls):
    before, after, _ = taizhou
    crop = (slice(None), slice(0, 100), slice(0, 100))
    b, a = before[crop].astype(np.float32), after[crop].astype(np.float32)
    extra_b = np.stack([np.full(b.shape[1:], 7.0, np.float32), b[0], 2 * b[1] + 3])  # constant, duplicate, affine copy
    extra_a = np.stack([np.full(a.shape[1:], 9.0, np.float32), a[0], 2 * a[1] + 3])
    b9, a9 = np.concatenate([b, extra_b]), np.concatenate([a, extra_a])
    only_after = b9.copy()
    model = cls(9)
    report = model.fit(pixels(b9), pixels(a9))
    dropped = {d["band"]: d["reason"] for d in report.dropped_bands}
    assert "constant" in dropped[6]
    if cls is IRMAD:
        assert "collinear" in dropped[7] and "collinear" in dropped[8] and set(dropped) == {6, 7, 8}
        assert len(report.correlations) == 6 and np.isfinite(report.correlations).all()
    else:
        assert set(dropped) == {6}
    text = json.dumps(report.to_dict())
    assert "NaN" not in text and "Infinity" not in text
    s = scores(model.for_scene(report), b9, a9)
    assert np.isfinite(s).all() and s.min() >= 0 and s.max() <= 1
    if cls is IRMAD:  # the scores equal those of the fit without the extra bands (CVA counts the copies again)
        base = cls(6).fit(pixels(b), pixels(a))
        np.testing.assert_allclose(s, scores(cls(6).for_scene(base), b, a), atol=1e-5)
    # a band constant in only one image, and all-constant images
    only_after[3] = 5.0
    r2 = cls(9).fit(pixels(b9), pixels(only_after))
    assert any(d["band"] == 3 and "after" in d["reason"] for d in r2.dropped_bands)
    assert np.isfinite(scores(cls(9).for_scene(r2), b9, only_after)).all()
    with pytest.raises(ValueError, match="band"):
        cls(2).fit(np.ones((100, 2)), np.ones((100, 2)))


def test_identical_images_and_near_duplicates_stay_finite(taizhou):
    before, _, _ = taizhou
    b = before[:, :100, :100].astype(np.float64)
    near = np.concatenate([b, b[:1] + np.random.default_rng(0).normal(0, 1e-3, b[:1].shape)])
    for x, y in ((b, b), (near, near + 1.0)):
        model = IRMAD(x.shape[0])
        report = model.fit(pixels(x), pixels(y))
        s = scores(model.for_scene(report), x, y)
        assert np.isfinite(s).all() and np.isfinite(report.correlations).all()


# ------------------------------------------------------------------------ the contract
@pytest.mark.parametrize("which", ["cva", "irmad", "irmad-max"])
def test_a_pixel_scores_the_same_in_any_crop(taizhou, cva_fit, irmad_fit, which):
    before, after, _ = taizhou
    if which == "irmad-max":
        model = IRMAD(6, statistic="max")
        fitted = model.for_scene(model.fit(pixels(before)[::5], pixels(after)[::5]))
    else:
        fitted = (cva_fit if which == "cva" else irmad_fit)[1]
    whole = scores(fitted, before, after)
    rng = np.random.default_rng(0)
    for _ in range(4):
        r0, c0 = rng.integers(0, 300, 2)
        h, w = rng.integers(1, 100, 2)
        crop = scores(fitted, before[:, r0:r0 + h, c0:c0 + w], after[:, r0:r0 + h, c0:c0 + w])
        assert np.abs(crop - whole[r0:r0 + h, c0:c0 + w]).max() <= 1e-6
    # a batch of two different crops: no mixing across the batch
    x = torch.cat([pair_tensor(before[:, :64, :64], after[:, :64, :64]),
                   pair_tensor(before[:, 100:164, 50:114], after[:, 100:164, 50:114])])
    with torch.no_grad():
        out = fitted.change_probability(fitted(x)).numpy()
    assert np.abs(out[1] - whole[100:164, 50:114]).max() <= 1e-6


@pytest.mark.parametrize("cls", [CVA, IRMAD])
def test_smoothing_agrees_with_the_whole_image_away_from_the_crop_edge(taizhou, cls):
    before, after, _ = (v[..., :200, :200] for v in taizhou)
    r = 2
    model = cls(6, smooth_radius=r)
    # a whole image: Otsu over the smoothed statistic
    report = model.fit(before.transpose(1, 2, 0), after.transpose(1, 2, 0))
    fitted = model.for_scene(report)
    whole = scores(fitted, before, after)
    crop = scores(fitted, before[:, 90:190, 40:170], after[:, 90:190, 40:170])
    assert np.abs(crop[r:-r, r:-r] - whole[90 + r:190 - r, 40 + r:170 - r]).max() <= 1e-6
    assert np.abs(crop - whole[90:190, 40:170]).max() > 1e-6  # (the edge itself differs: the window is cut)
    # the pipeline's route: fit on pixels, then a histogram of the scene's scores -> Otsu in native units
    per_pixel = model.fit(pixels(before), pixels(after))
    route = model.for_scene(per_pixel)
    counts, edges = np.histogram(scores(route, before, after), bins=1024, range=(0, 1))
    t = route.threshold_from_histogram(counts, edges)
    assert float(route.native_from_score(t)) == pytest.approx(report.threshold_native, rel=0.01)
    refined = per_pixel.with_threshold(t, "otsu-histogram")
    assert refined.threshold == t and refined.threshold_native == pytest.approx(route.native_from_score(t))
    # NaN pixels stay NaN and do not spread
    b = before.astype(np.float32)
    b[:, 100, 100] = np.nan
    s = scores(fitted, b, after)
    assert np.isnan(s[100, 100]) and np.isfinite(np.delete(s.ravel(), 100 * 200 + 100)).all()


@pytest.mark.parametrize("cls", [CVA, IRMAD])
@pytest.mark.parametrize("bands", [3, 6, 13])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_any_band_count_and_dtype(cls, bands, dtype):
    rng = np.random.default_rng(bands)
    h = w = 48
    scale = {np.uint8: 20.0, np.uint16: 3000.0, np.float32: 0.1}[dtype]
    top = np.iinfo(dtype).max if dtype != np.float32 else np.inf
    base = rng.normal(4, 1, (bands, h, w)) * scale
    before = base + rng.normal(0, 0.05 * scale, base.shape)
    after = 1.1 * base + 0.2 * scale + rng.normal(0, 0.05 * scale, base.shape)  # a global gain and offset
    after[:, 10:20, 10:20] += 2.5 * scale * (-1.0) ** np.arange(bands)[:, None, None]  # a planted change
    before, after = (np.clip(v, 0, top).astype(dtype) for v in (before, after))
    model = cls(bands)
    report = model.fit(pixels(before), pixels(after))
    s = scores(model.for_scene(report), before, after)
    assert s.shape == (h, w) and np.isfinite(s).all() and 0 <= s.min() and s.max() <= 1
    changed = np.zeros((h, w), bool)
    changed[10:20, 10:20] = True
    assert (s[changed] > report.threshold).mean() > 0.9 and (s[~changed] > report.threshold).mean() < 0.1


@pytest.mark.parametrize("cls", [CVA, IRMAD])
def test_report_round_trips_through_json_and_reapplies(taizhou, cls):
    before, after, _ = taizhou
    model = cls(6)
    report = model.fit(pixels(before)[::7], pixels(after)[::7])
    again = FitReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert again == report and again.n_samples == len(pixels(before)[::7])
    assert again.method == cls.method and again.threshold == 0.5 and 0 < again.change_fraction < 1
    crop = before[:, :50, :50], after[:, :50, :50]
    np.testing.assert_array_equal(scores(model.for_scene(again), *crop), scores(model.for_scene(report), *crop))
    with pytest.raises(ValueError, match="unknown FitReport fields"):
        FitReport.from_dict({**report.to_dict(), "extra": 1})


@pytest.mark.parametrize("which", ["cva", "irmad"])
def test_no_precision_lost_under_autocast_or_half(taizhou, cva_fit, irmad_fit, which):
    before, after, _ = taizhou
    fitted = (cva_fit if which == "cva" else irmad_fit)[1]
    model = CVA(6) if which == "cva" else IRMAD(6)
    x = pair_tensor(before[:, :64, :64], after[:, :64, :64])
    with torch.no_grad():
        plain = fitted(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = fitted(x)
        halved = model.for_scene(fitted.report).half()(x)
    assert auto.dtype == torch.float32 and torch.equal(auto, plain)
    assert torch.equal(halved, plain)
    with torch.no_grad():  # raw integer tensors are taken as they are
        raw = torch.from_numpy(np.stack([before[:, :64, :64], after[:, :64, :64]]))[None]
        assert raw.dtype == torch.uint8 and torch.equal(fitted(raw), plain) and torch.equal(fitted(raw.to(torch.int32)), plain)


def test_contract_errors_and_registration():
    from models.registry import get_entry

    assert get_entry("cva").factory is not None and get_entry("irmad").factory(in_channels=4).in_channels == 4
    assert CVA.kind == IRMAD.kind == "scene-fitted"
    with pytest.raises(RuntimeError, match="fit"):
        CVA(3)(torch.zeros(1, 2, 3, 8, 8))
    with pytest.raises(ValueError, match="num_classes"):
        IRMAD(3, num_classes=2)
    with pytest.raises(ValueError, match="bands"):
        CVA(3).fit(np.ones((100, 4)), np.ones((100, 4)))
    rng = np.random.default_rng(0)
    report = IRMAD(3).fit(rng.normal(size=(500, 3)), rng.normal(size=(500, 3)))
    with pytest.raises(ValueError, match="cannot be applied"):
        CVA(3).for_scene(report)


def test_threshold_from_a_score_histogram_is_otsu_in_native_units(cva_fit):
    _, model = cva_fit
    scale = model.report.scale
    rng = np.random.default_rng(0)
    native = np.concatenate([np.abs(rng.normal(0.4, 0.2, 90_000)), rng.normal(3, 0.4, 10_000)]) * scale
    counts, edges = np.histogram(model.score_from_native(native), bins=1024, range=(0, 1))
    t = model.threshold_from_histogram(counts, edges)
    assert model.native_from_score(t) == pytest.approx(otsu_threshold(native), rel=0.02)
    assert 1.2 < model.native_from_score(t) / scale < 2.2  # the valley between the two modes
    assert otsu_threshold(model.score_from_native(native), range=(0, 1)) < t  # Otsu over the scores cuts lower
