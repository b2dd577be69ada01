"""In-memory prediction: tiles with a halo reproduce a whole-image pass for a local model; padding is cropped."""
from __future__ import annotations

import numpy as np
import torch

from models.base import ChangeModel
from models.weights import WeightsMeta
from pipeline.learn.predict import normalize, predict_image


class LocalDiff(ChangeModel):
    """3x3 convolutions only (receptive field 9 px): its output does not depend on the window."""

    size_divisor = 8

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(*[torch.nn.Conv2d(6 if i == 0 else 8, 8 if i < 3 else 1, 3, padding=1)
                                         for i in range(4)])

    def forward_pair(self, before, after):
        return self.net(torch.cat([before, after], 1))


def test_tiles_with_halo_match_one_pass_and_sizes_need_no_divisor():
    model = LocalDiff().eval()
    x = np.random.default_rng(0).normal(size=(2, 3, 75, 90)).astype("float32")
    whole = predict_image(model, x)
    assert whole.shape == (75, 90)
    tiled = predict_image(model, x, tile=32, halo=8, batch_size=3)
    # Reflect padding at the scene edge differs from the whole pass's zero padding within 4 px of the edge only.
    np.testing.assert_allclose(tiled[4:-4, 4:-4], whole[4:-4, 4:-4], atol=1e-5)
    with torch.no_grad():
        ref = torch.sigmoid(model.net(torch.from_numpy(x.reshape(1, 6, 75, 90))))[0, 0].numpy()
    np.testing.assert_allclose(whole[:-4, :-4], ref[:-4, :-4], atol=1e-5)


def test_normalize_uses_the_weights_statistics():
    meta = WeightsMeta(model="tinycd", scale=0.5, mean=(1.0, 2.0), std=(2.0, 4.0))
    raw = np.full((2, 2, 3, 3), 10, "uint8")
    out = normalize(raw, meta)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0], 2.0)
    np.testing.assert_allclose(out[:, 1], 0.75)
