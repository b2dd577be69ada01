"""Paired augmentations: the same geometry for both dates and the label, photometry per date.

Every function takes a numpy ``Generator``, so a sample's augmentation is fixed by the seed
it is given (the trainer seeds each sample from ``(seed, epoch, index)``): runs repeat
exactly, whatever the number of loader processes, and a resumed run sees the same crops.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Augment:
    """Which augmentations to apply (probabilities and jitter strengths)."""

    flip: float = 0.5  # each of horizontal and vertical
    rot90: bool = True  # a random multiple of 90 degrees
    swap: float = 0.5  # temporal swap: change between two dates is symmetric
    brightness: float = 0.1  # additive, in units of the normalised band (std)
    contrast: float = 0.1  # multiplicative, 1 +- contrast

    @classmethod
    def none(cls) -> Augment:
        """No augmentation (crops only)."""
        return cls(flip=0.0, rot90=False, swap=0.0, brightness=0.0, contrast=0.0)


def random_crop(image: np.ndarray, label: np.ndarray, valid: np.ndarray, size: int,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same random ``size`` x ``size`` window of ``image (2, C, H, W)``, ``label`` and ``valid (H, W)``.

    Images smaller than ``size`` are padded with invalid pixels (they count in no loss).
    """
    h, w = label.shape
    if h < size or w < size:
        ph, pw = max(0, size - h), max(0, size - w)
        image = np.pad(image, ((0, 0), (0, 0), (0, ph), (0, pw)))
        label = np.pad(label, ((0, ph), (0, pw)))
        valid = np.pad(valid, ((0, ph), (0, pw)))
        h, w = label.shape
    y = int(rng.integers(0, h - size + 1))
    x = int(rng.integers(0, w - size + 1))
    return image[..., y:y + size, x:x + size], label[y:y + size, x:x + size], valid[y:y + size, x:x + size]


def geometric(image: np.ndarray, label: np.ndarray, valid: np.ndarray, aug: Augment,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flips, 90-degree turns and temporal swap, identical for both dates and the label."""
    if rng.random() < aug.flip:
        image, label, valid = image[..., ::-1], label[:, ::-1], valid[:, ::-1]
    if rng.random() < aug.flip:
        image, label, valid = image[..., ::-1, :], label[::-1], valid[::-1]
    if aug.rot90:
        k = int(rng.integers(0, 4))
        if k:
            image, label, valid = np.rot90(image, k, (-2, -1)), np.rot90(label, k), np.rot90(valid, k)
    if rng.random() < aug.swap:
        image = image[::-1]
    return image, label, valid


def photometric(image: np.ndarray, aug: Augment, rng: np.random.Generator) -> np.ndarray:
    """Brightness and contrast jitter of a normalised ``(2, C, H, W)`` float image, drawn per date.

    Each date gets its own factors (acquisitions differ in light and sensor), the same for
    all of its bands.
    """
    if not aug.brightness and not aug.contrast:
        return image
    contrast = 1 + rng.uniform(-aug.contrast, aug.contrast, size=(2, 1, 1, 1))
    brightness = rng.uniform(-aug.brightness, aug.brightness, size=(2, 1, 1, 1))
    return (image * contrast + brightness).astype(image.dtype, copy=False)
