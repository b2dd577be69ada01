"""Change vector analysis (CVA) fitted to each scene, with Otsu's automatic threshold.

Per date, each band is standardised by that date's own mean and standard deviation over the
fitted pixels (which absorbs gains, offsets and seasonal shifts common to the scene); the
change statistic is the length of the difference of the standardised band vectors, divided
by ``sqrt(C)`` (``rms=True``: the root mean square over the bands, comparable across band
counts). The threshold is Otsu's over the fitted pixels' statistic.
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from models.fitting import SceneFittedModel, _Fitted, constant_bands
from models.registry import register_model


class CVA(SceneFittedModel):
    """Change vector analysis: ``s = || (y - mu_y) / sd_y - (x - mu_x) / sd_x || / sqrt(C)``.

    The score is ``s / (s + T)`` with ``T`` Otsu's threshold of ``s`` over the fitted pixels:
    0 for no difference, 0.5 at the threshold, towards 1 for changes many times larger.
    Bands constant at either date carry no information (and no standard deviation): they
    are left out (weight 0) and reported.

    Args:
        in_channels: Number of bands.
        rms: Divide the length by ``sqrt(C)`` (C: the bands used); it does not move the
            classification, only the units.
        smooth_radius: Local mean of ``s`` over ``(2r+1)^2`` pixels before the score (0: none).
        bins: Histogram bins for Otsu.
        num_classes: Must be 1.
    """

    method: ClassVar[str] = "cva"
    statistic_doc: ClassVar[str] = ("CVA magnitude: Euclidean norm of the difference of the per-date standardised band "
                                    "vectors, divided by sqrt(bands used)")
    _buffer_names: ClassVar[tuple[str, ...]] = ("mean_before", "std_before", "mean_after", "std_after", "weight")

    def __init__(self, in_channels: int = 3, rms: bool = True, smooth_radius: int = 0, bins: int = 1024,
                 num_classes: int = 1, **kw: Any) -> None:
        if kw:
            raise TypeError(f"CVA got unknown options {sorted(kw)}")
        super().__init__(in_channels, smooth_radius=smooth_radius, bins=bins, num_classes=num_classes, rms=bool(rms))
        self.rms = bool(rms)

    def _fit_parameters(self, x: np.ndarray, y: np.ndarray) -> _Fitted:
        dropped: list[dict[str, Any]] = []
        weight = np.ones(x.shape[1])
        for name, data in (("before", x), ("after", y)):
            for c in constant_bands(data):
                if weight[c]:
                    dropped.append({"band": c, "reason": f"constant in the {name} image"})
                weight[c] = 0.0
        if not weight.any():
            raise ValueError("CVA: every band is constant in one of the images; there is nothing to compare")
        sx, sy = x.std(axis=0), y.std(axis=0)
        params = {
            "mean_before": x.mean(axis=0), "std_before": np.where(weight > 0, sx, 1.0),
            "mean_after": y.mean(axis=0), "std_after": np.where(weight > 0, sy, 1.0), "weight": weight,
        }
        return _Fitted(params, dropped=sorted(dropped, key=lambda d: d["band"]))

    def _statistic(self, pair: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        used = [c for c, w in enumerate(self._parameters_json["weight"]) if w]
        before, after = pair[:, 0], pair[:, 1]
        total = torch.zeros_like(before[:, 0])
        for c in used:  # in place: a few passes over one band at a time
            d = (after[:, c] - params["mean_after"][c]) / params["std_after"][c]
            d.sub_((before[:, c] - params["mean_before"][c]) / params["std_before"][c])
            total.addcmul_(d, d)
        if self.rms:
            total.div_(len(used))
        return total.sqrt_()


@register_model("cva", description="CVA: change vector analysis of per-date standardised bands + Otsu, fitted per scene "
                                   "(training-free)", kind="scene-fitted")
def cva(in_channels: int = 3, smooth_radius: int = 2, **kw: Any) -> CVA:
    """Change vector analysis (scene-fitted)."""
    return CVA(in_channels=in_channels, smooth_radius=smooth_radius, **kw)
