"""Evaluate a change map against a label raster: the change class's scores and confusion matrix."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.errors import ChangemapError
from pipeline.io import raster
from pipeline.metrics import Confusion, confusion


@dataclass(frozen=True)
class LabelValues:
    """Which label values mean no change, change, and (optionally) unlabeled."""

    no_change: int
    change: int
    nodata: int | None = None


def parse_label_values(text: str) -> LabelValues:
    """``"0,255"`` or ``"1,2"`` or ``"0,1,255"`` (no change, change[, nodata])."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in (2, 3):
        raise ChangemapError(f"--label-values takes NO_CHANGE,CHANGE[,NODATA], e.g. 0,255 or 1,2; got {text!r}")
    return LabelValues(*values)


def infer_label_values(values: np.ndarray, nodata: float | None) -> LabelValues:
    """Recognise 0/255, 0/1 (255 = unlabeled, as in Landsat Taizhou) and OSCD's 1/2 conventions."""
    present = {int(v) for v in np.unique(values)}
    nd = int(nodata) if nodata is not None else None
    labelled = present - ({nd} if nd is not None else set())
    for no, yes, extra_nodata in ((0, 255, None), (0, 1, 255), (1, 2, 0)):
        if labelled <= {no, yes} or (extra_nodata is not None and labelled <= {no, yes, extra_nodata}):
            return LabelValues(no, yes, nd if nd is not None else (extra_nodata if extra_nodata in labelled else None))
    raise ChangemapError(
        f"cannot tell the label convention from its values {sorted(present)[:10]}; pass --label-values "
        "NO_CHANGE,CHANGE[,NODATA] (e.g. 0,255 or 1,2)"
    )


def prediction_mask(path: str, threshold: float | None) -> tuple[np.ndarray, np.ndarray, object]:
    """Binary change and valid mask of a change map: its mask band, or band 1 thresholded."""
    tags, descriptions = raster.read_metadata(path, "PRED")
    if threshold is None and "change_mask" in descriptions:
        data, grid, valid = raster.read_raster(path, descriptions.index("change_mask") + 1)
        return data > 0, valid, grid
    data, grid, valid = raster.read_raster(path, 1)
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
        label, label_valid = raster.read_on_grid(label_path, grid)
    else:
        label, _, label_valid = raster.read_raster(label_path, 1)
    values = label_values or infer_label_values(label[label_valid], label_info.nodata)
    valid = pred_valid & label_valid & np.isin(label, (values.no_change, values.change))
    if values.nodata is not None:
        valid &= label != values.nodata
    return confusion(pred, label == values.change, valid)
