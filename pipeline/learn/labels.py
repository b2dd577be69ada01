"""Label conventions of change-detection datasets: which values mean no change, change and unlabeled."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.errors import ChangemapError


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
