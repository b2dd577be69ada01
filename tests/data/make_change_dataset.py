"""Seeded tiny change-detection datasets in the LEVIR-CD layout (A/, B/, label/ PNGs) for training tests.

Each pair: a smooth textured background (BEFORE), the same plus noise and a few bright
rectangles ("new buildings", AFTER); the label is 255 on the rectangles, 0 elsewhere.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def make_pair(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BEFORE, AFTER ``(H, W, 3)`` uint8 and the 0/255 label ``(H, W)``."""
    yy, xx = np.mgrid[0:size, 0:size] / (size / 4)
    phase = rng.uniform(0, 6, 3)
    base = np.stack([90 + 40 * np.sin(yy + p) * np.cos(xx - p) for p in phase], -1) + rng.normal(0, 8, (size, size, 3))
    before = np.clip(base, 0, 255)
    after = np.clip(base + rng.normal(0, 6, base.shape), 0, 255)
    label = np.zeros((size, size), "uint8")
    for _ in range(int(rng.integers(1, 4))):
        h, w = (int(v) for v in rng.integers(size // 8, size // 3, 2))
        y, x = (int(v) for v in rng.integers(0, size - max(h, w), 2))
        after[y:y + h, x:x + w] = rng.uniform(200, 240, 3)
        label[y:y + h, x:x + w] = 255
    return before.astype("uint8"), after.astype("uint8"), label


def make_dataset(root: str | Path, n: int = 6, size: int = 64, seed: int = 0,
                 splits: dict[str, list[int]] | None = None) -> Path:
    """Write ``n`` pairs named ``pair_00`` ... under ``root``; ``splits`` writes ``list/<name>.txt``."""
    root = Path(root)
    for d in ("A", "B", "label"):
        (root / d).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        before, after, label = make_pair(rng, size)
        Image.fromarray(before).save(root / "A" / f"pair_{i:02d}.png")
        Image.fromarray(after).save(root / "B" / f"pair_{i:02d}.png")
        Image.fromarray(label).save(root / "label" / f"pair_{i:02d}.png")
    if splits:
        (root / "list").mkdir(exist_ok=True)
        for name, members in splits.items():
            (root / "list" / f"{name}.txt").write_text("".join(f"pair_{i:02d}.png\n" for i in members))
    return root
