"""Evaluate a change map against a label raster: the change class's scores and confusion matrix."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.errors import ChangemapError
from pipeline.io import raster, read
from pipeline.learn.labels import LabelValues, infer_label_values, parse_label_values
from pipeline.learn.metrics import Confusion, confusion

__all__ = ["LabelValues", "evaluate_dataset", "evaluate_pair", "infer_label_values", "parse_label_values"]


def prediction_mask(path: str, threshold: float | None) -> tuple[np.ndarray, np.ndarray, object]:
    """Binary change and valid mask of a change map: its mask band, or band 1 thresholded."""
    tags, descriptions = read.read_metadata(path, "PRED")
    if threshold is None and "change_mask" in descriptions:
        data, grid, valid = read.read_raster(path, descriptions.index("change_mask") + 1)
        return data > 0, valid, grid
    data, grid, valid = read.read_raster(path, 1)
    scale = float(tags.get("CHANGEMAP_PROBABILITY_SCALE", 255 if data.dtype == np.uint8 else 1))
    cut = threshold if threshold is not None else float(tags.get("CHANGEMAP_THRESHOLD", 0.5))
    probability = data.astype("float32") / scale
    valid = valid & np.isfinite(probability)
    return probability > cut, valid, grid


def evaluate_pair(pred_path: str, label_path: str, *, threshold: float | None = None,
                  label_values: LabelValues | None = None, align: bool = False) -> Confusion:
    """Confusion of one change map against its label; nodata of either side is excluded."""
    pred, pred_valid, grid = prediction_mask(pred_path, threshold)
    label_info = raster.read_info(label_path, "LABEL")
    if label_info.grid != grid:
        if not align:
            raise ChangemapError(
                f"label {label_path} is on another grid than {pred_path} ({label_info.grid.width}x"
                f"{label_info.grid.height} vs {grid.width}x{grid.height}, or another CRS/transform); "
                "pass --align to warp the label onto the prediction's grid (nearest neighbour)"
            )
        label, label_valid = read.read_on_grid(label_path, grid)
    else:
        label, _, label_valid = read.read_raster(label_path, 1)
    values = label_values or infer_label_values(label[label_valid], label_info.nodata)
    valid = pred_valid & label_valid & np.isin(label, (values.no_change, values.change))
    if values.nodata is not None:
        valid &= label != values.nodata
    return confusion(pred, label == values.change, valid)


@dataclass(frozen=True)
class DatasetScores:
    """Scores of a model over a dataset: per image and over the whole set (summed confusion)."""

    model: str
    weights: str
    threshold: float
    per_image: tuple[tuple[str, Confusion], ...]

    @property
    def total(self) -> Confusion:
        """The confusion summed over every image (not an average of per-image scores)."""
        out = Confusion(0, 0, 0, 0)
        for _, c in self.per_image:
            out = out + c
        return out

    def as_dict(self) -> dict:
        """JSON-friendly: the totals, then each image's scores."""
        return {"model": self.model, "weights": self.weights, "threshold": self.threshold, **self.total.as_dict(),
                "images": [{"name": n, **c.as_dict()} for n, c in self.per_image]}


def load_model(model: str | None, weights: str | None, in_channels: int | None = None):
    """``--model``/``--weights`` -> (model in eval mode, its metadata, the model name).

    ``model`` may be omitted for a changemap checkpoint (it names its model); ``weights``
    None means the model's default weights, ``none`` random initialisation.
    """
    from models.weights import checkpoint_model
    from pipeline import loader
    from pipeline.io.fs import download

    spec = model or checkpoint_model(weights, fetch=download)
    if spec is None:
        raise ChangemapError("pass --model NAME (only a changemap checkpoint names its own model)")
    net, meta, _ = loader.build(spec, weights, in_channels)
    return net, meta, meta.model


def evaluate_dataset(model: str | None, weights: str | None, data: str, *, split: str | None = None,
                     threshold: float | None = None, label_values: LabelValues | None = None,
                     bands: tuple[int, ...] | None = None, tile: int = 0, halo: int = 64,
                     statistics: str = "window", align: bool = False, device: str | None = None,
                     progress=None) -> DatasetScores:
    """Run a model over every pair of a dataset and score it against the labels.

    Images are predicted whole (``tile == 0``) or in tiles with a halo (``statistics``: see
    :func:`pipeline.learn.predict.predict_image`); pixels where either date has no data, or the
    label is unlabeled, are excluded. ``progress(done, total, name)``
    is called after each image.
    """
    import torch

    from pipeline.learn.datasets import infer_dataset_label_values, load_dataset, read_labelled, read_pair
    from pipeline.learn.predict import normalize, predict_image
    from pipeline.loader import check_scene_statistics, select_bands

    samples = load_dataset(data, split)
    net, meta, name = load_model(model, weights, len(bands) if bands else None)
    if statistics == "scene" and tile:
        check_scene_statistics(net, name, tile, halo)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    net.to(dev)
    values = label_values or infer_dataset_label_values(samples)
    fitted = net.kind == "scene-fitted"
    cut = threshold if threshold is not None else (None if fitted else meta.threshold)
    rows = []
    for i, s in enumerate(samples, 1):
        pair, valid = read_pair(s)
        if fitted:  # fitted to each image's valid pixels; every band unless some are chosen
            chosen = tuple(bands) if bands else tuple(range(1, pair.shape[1] + 1))
            prob, image_cut = fit_and_score(name, pair[:, np.asarray(chosen) - 1], valid, device=dev)
            image_cut = cut if cut is not None else image_cut
        else:
            chosen = select_bands(meta, pair.shape[1], bands)
            x = normalize(pair[:, np.asarray(chosen) - 1], meta)
            prob = predict_image(net, x, device=dev, tile=tile, halo=halo, statistics=statistics)
            image_cut = cut
        change, labelled = read_labelled(s, values, pair.shape[-2:], align)
        rows.append((s.name, confusion(prob > image_cut, change, valid & labelled)))
        if progress:
            progress(i, len(samples), s.name)
    weights_name = "none (fitted to each image)" if fitted else str(weights if weights is not None else meta.source
                                                                    or "default")
    return DatasetScores(name, weights_name, cut if cut is not None else float("nan"), tuple(rows))


def fit_and_score(model: str, pair: np.ndarray, valid: np.ndarray, *, device="cpu") -> tuple[np.ndarray, float]:
    """A scene-fitted model fitted to one image pair's valid pixels: its scores ``(H, W)`` and Otsu's threshold.

    The threshold is Otsu's over the image's own scores (over the model's native statistic, as a
    run takes it over a scene: :mod:`models.fitting`); NaN marks the pixels without data.
    """
    import torch

    from pipeline import loader

    model_net, _ = loader.build_loaded(model, None, {"in_channels": int(pair.shape[1])})
    before, after = (pair[d].reshape(pair.shape[1], -1).T[valid.ravel()] for d in (0, 1))
    scene = model_net.for_scene(model_net.fit(before, after)).to(device)
    x = pair.astype("float32")
    x[:, :, ~valid] = np.nan
    with torch.inference_mode():
        score = scene.change_probability(scene(torch.from_numpy(x)[None].to(device))).cpu().numpy()[0]
    ok = np.isfinite(score)
    counts, edges = np.histogram(score[ok], bins=1024, range=(0.0, 1.0))
    return score, float(scene.threshold_from_histogram(counts, edges)) if ok.any() else 0.5
