"""Change-detection datasets: discovery (LEVIR-CD layout, split lists, manifests) and reading samples.

A dataset is a list of :class:`Sample` (before, after, label paths or URLs) found from one
``--data`` value:

- a folder in the LEVIR-CD layout: ``A/``, ``B/`` and ``label/`` holding files of the same
  name (the label may differ in extension), optionally ``list/<split>.txt`` files naming the
  members of each split, or split sub-folders ``<split>/A``, ``<split>/B``, ``<split>/label``;
- a manifest: CSV with a header, or JSON Lines, one pair per row with the columns/keys
  ``before``, ``after``, ``label`` (aliases ``A``/``B``, ``image1``/``image2``, ``t1``/``t2``,
  ``mask``), optionally ``name`` and ``split``. Relative paths are relative to the manifest.

Reading goes through :mod:`pipeline.io` only (rasterio and fsspec stay there).
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import manifest
from pipeline.errors import ChangemapError
from pipeline.io import fs, raster, read
from pipeline.learn.labels import LabelValues, infer_label_values

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".jp2")
MANIFEST_SUFFIXES = (".csv", ".jsonl", ".ndjson")
_COLUMNS = {
    "before": ("before", "a", "image1", "img1", "t1", "pre"),
    "after": ("after", "b", "image2", "img2", "t2", "post"),
    "label": ("label", "mask", "cm", "gt", "change"),
}


class DatasetError(ChangemapError):
    """A dataset that cannot be found, parsed or read."""


@dataclass(frozen=True)
class Sample:
    """One before/after pair and its change label (None for unlabeled pairs)."""

    name: str
    before: str
    after: str
    label: str | None


@contextmanager
def _plain_images():
    """Dataset tiles are often plain PNGs: GDAL's "no geotransform" warning says nothing useful there."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Dataset has no geotransform")
        yield


def _is_url(path: str) -> bool:
    return "://" in path


def load_dataset(spec: str, split: str | None = None, *, need_labels: bool = True) -> list[Sample]:
    """Samples of a LEVIR-layout folder or a CSV/JSONL manifest, optionally one split of it.

    Args:
        spec: folder, or manifest path/URL.
        split: a split name (``list/<split>.txt``, a ``<split>/`` sub-folder, or the manifest's
            ``split`` column); None: every sample.
        need_labels: require a label for every sample.
    """
    spec = str(spec)
    if spec.lower().endswith(MANIFEST_SUFFIXES):
        samples = _from_manifest(spec, split)
    elif not _is_url(spec) and Path(spec).is_dir():
        # Absolute paths: Ray Train workers run in another working directory.
        samples = _from_folder(Path(spec).resolve(), split)
    else:
        raise DatasetError(
            f"dataset {spec} is neither a folder (LEVIR-CD layout: A/, B/, label/) nor a manifest "
            f"({', '.join(MANIFEST_SUFFIXES)}); check the path"
        )
    if not samples:
        raise DatasetError(f"dataset {spec}{f' split {split!r}' if split else ''} holds no image pairs")
    if need_labels:
        missing = [s.name for s in samples if s.label is None]
        if missing:
            raise DatasetError(f"dataset {spec}: {len(missing)} pair(s) have no label (e.g. {missing[:3]}); "
                               "training and evaluation need one per pair")
    return samples


def available_splits(spec: str) -> list[str]:
    """Split names a dataset offers (list files, split folders or manifest values)."""
    spec = str(spec)
    if spec.lower().endswith(MANIFEST_SUFFIXES):
        return sorted({r.get("split", "") for r in _manifest_rows(spec)} - {""})
    root = Path(spec)
    names = {p.stem for p in (root / "list").glob("*.txt")} if (root / "list").is_dir() else set()
    names |= {p.name for p in root.iterdir() if p.is_dir() and (p / "A").is_dir()} if root.is_dir() else set()
    return sorted(names)


def _images(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}


def _from_folder(root: Path, split: str | None) -> list[Sample]:
    if split and (root / split / "A").is_dir():
        return _from_folder(root / split, None)
    if not (root / "A").is_dir() or not (root / "B").is_dir():
        raise DatasetError(f"dataset folder {root} has no A/ and B/ sub-folders (LEVIR-CD layout: A/, B/, label/)")
    before, after = _images(root / "A"), _images(root / "B")
    labels = _images(root / "label") if (root / "label").is_dir() else {}
    names = sorted(before)
    if split:
        listing = root / "list" / f"{split}.txt"
        if not listing.exists():
            raise DatasetError(f"dataset {root} has no split {split!r} (no {listing} nor {root / split}/A); "
                               f"its splits: {', '.join(available_splits(str(root))) or 'none'}")
        wanted = [Path(line.strip()).stem for line in listing.read_text().splitlines() if line.strip()]
        unknown = [n for n in wanted if n not in before]
        if unknown:
            raise DatasetError(f"{listing} names {len(unknown)} image(s) missing from {root / 'A'} (e.g. {unknown[:3]})")
        names = wanted
    missing = [n for n in names if n not in after]
    if missing:
        raise DatasetError(f"dataset {root}: {len(missing)} image(s) of A/ have no partner in B/ (e.g. {missing[:3]})")
    return [Sample(n, str(before[n]), str(after[n]), str(labels[n]) if n in labels else None) for n in names]


def _manifest_rows(spec: str) -> list[dict[str, str]]:
    return manifest.parse_rows(fs.read_text(spec), spec, DatasetError)


def _from_manifest(spec: str, split: str | None) -> list[Sample]:
    rows = _manifest_rows(spec)
    samples = []
    for i, row in enumerate(rows, 1):
        if split is not None and row.get("split") != split:
            continue
        found = {}
        for key, aliases in _COLUMNS.items():
            found[key] = next((row[a] for a in aliases if row.get(a)), None)
        if not found["before"] or not found["after"]:
            raise DatasetError(f"manifest {spec} row {i} lacks a before/after path (columns: before, after, label; "
                               f"found {sorted(row)})")
        name = row.get("name") or Path(found["before"].split("?")[0]).stem
        samples.append(Sample(name, manifest.resolve(found["before"], spec), manifest.resolve(found["after"], spec),
                              manifest.resolve(found["label"], spec) if found["label"] else None))
    if split is not None and not samples:
        raise DatasetError(f"manifest {spec} has no rows with split {split!r}; its splits: "
                           f"{', '.join(available_splits(spec)) or 'none (no split column)'}")
    return samples


def split_samples(samples: Sequence[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """A seeded random (train, val) split holding out ``fraction`` of the samples (at least one)."""
    if len(samples) < 2:
        raise DatasetError(f"cannot hold out a validation set from {len(samples)} pair(s); pass --val DATASET "
                           "or --val none")
    n_val = min(len(samples) - 1, max(1, round(len(samples) * fraction)))
    order = np.random.default_rng(seed).permutation(len(samples))
    val = sorted(order[:n_val])
    train = sorted(order[n_val:])
    return [samples[i] for i in train], [samples[i] for i in val]


def read_pair(sample: Sample, bands: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Both dates as ``(2, C, H, W)`` (raw values, the selected 1-based bands) and valid ``(H, W)``."""
    with _plain_images():
        a, va = read.read_image(sample.before, "BEFORE image")
        b, vb = read.read_image(sample.after, "AFTER image")
    if a.shape != b.shape:
        raise DatasetError(
            f"pair {sample.name}: BEFORE {sample.before} is {a.shape[0]} band(s) {a.shape[2]}x{a.shape[1]} but AFTER "
            f"{sample.after} is {b.shape[0]} band(s) {b.shape[2]}x{b.shape[1]}; put both on one grid first"
        )
    if bands:
        if max(bands) > a.shape[0] or min(bands) < 1:
            raise DatasetError(f"pair {sample.name} has {a.shape[0]} band(s); bands {tuple(bands)} do not exist")
        idx = np.asarray(bands) - 1
        a, b = a[idx], b[idx]
    return np.stack([a, b]), va & vb


def read_label_raw(sample: Sample, shape: tuple[int, int] | None = None,
                   align: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Band 1 of the label and its valid mask; on another grid: warped onto BEFORE's with ``align``."""
    if sample.label is None:
        raise DatasetError(f"pair {sample.name} has no label")
    with _plain_images():
        label, valid = read.read_image(sample.label, "LABEL")
    label = label[0]
    if shape is not None and label.shape != tuple(shape):
        if not align:
            raise DatasetError(
                f"label {sample.label} is {label.shape[1]}x{label.shape[0]} but its images are {shape[1]}x{shape[0]}: "
                "the grids differ; pass --align to warp the label onto BEFORE's grid (georeferenced rasters)"
            )
        grid = raster.read_info(sample.before, "BEFORE image").grid
        label, valid = read.read_on_grid(sample.label, grid)
    return label, valid


def read_labelled(sample: Sample, values: LabelValues, shape: tuple[int, int] | None = None,
                  align: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Change (bool) and labelled (bool) masks of a label raster under a label convention."""
    label, valid = read_label_raw(sample, shape, align)
    known = (label == values.no_change) | (label == values.change)
    odd = valid & ~known & ((label != values.nodata) if values.nodata is not None else True)
    if odd.any():
        raise DatasetError(
            f"label {sample.label} holds values {sorted(np.unique(label[odd]).tolist())[:10]} outside the label "
            f"convention no change={values.no_change}, change={values.change}, nodata={values.nodata}; "
            "pass --label-values NO_CHANGE,CHANGE[,NODATA]"
        )
    return label == values.change, valid & known


def infer_dataset_label_values(samples: Sequence[Sample], limit: int = 64, seed: int = 0) -> LabelValues:
    """The label convention of a dataset, from the values of (up to ``limit``) of its labels together."""
    chosen = list(samples)
    if len(chosen) > limit:
        chosen = [chosen[i] for i in sorted(np.random.default_rng(seed).choice(len(chosen), limit, replace=False))]
    present: set[int] = set()
    for s in chosen:
        label, valid = read_label_raw(s)
        present |= set(np.unique(label[valid]).tolist())
    return infer_label_values(np.array(sorted(present)), None)


@dataclass(frozen=True)
class DatasetStats:
    """What a training run learns from its data before the first step."""

    bands: tuple[int, ...]
    dtype: str
    mean: tuple[float, ...]  # of raw * scale, per band, both dates
    std: tuple[float, ...]
    scale: float
    change_fraction: float  # among labelled pixels
    label_values: LabelValues
    samples_scanned: int


def default_scale(dtype: str) -> float:
    """Input scale stored with trained weights: 1/255 for 8-bit imagery, 1 otherwise (mean/std do the rest)."""
    return 1 / 255 if dtype == "uint8" else 1.0


def scan_dataset(samples: Sequence[Sample], bands: Sequence[int] | None, label_values: LabelValues | None,
                 *, limit: int = 64, seed: int = 0) -> DatasetStats:
    """Per-band mean/std (both dates, valid pixels), change fraction and label convention of the training data.

    At most ``limit`` samples (a seeded choice) are read.
    """
    chosen = list(samples)
    if len(chosen) > limit:
        chosen = [chosen[i] for i in sorted(np.random.default_rng(seed).choice(len(chosen), limit, replace=False))]
    values = label_values or infer_dataset_label_values(chosen)
    total = sq = None
    count = 0
    changed = labelled = 0
    dtype = None
    for s in chosen:
        pair, valid = read_pair(s, bands)
        if dtype is None:
            dtype = pair.dtype.name
            bands = tuple(bands) if bands else tuple(range(1, pair.shape[1] + 1))
        x = pair.transpose(1, 0, 2, 3)[:, :, valid].reshape(pair.shape[1], -1).astype("float64")
        total = x.sum(1) if total is None else total + x.sum(1)
        sq = (x * x).sum(1) if sq is None else sq + (x * x).sum(1)
        count += x.shape[1]
        change, lab = read_labelled(s, values, pair.shape[-2:])
        changed += int((change & lab).sum())
        labelled += int(lab.sum())
    if not count:
        raise DatasetError("the training images hold no valid pixels")
    scale = default_scale(dtype)
    mean = total / count
    std = np.sqrt(np.maximum(sq / count - mean * mean, 0.0))
    std = np.where(std > 0, std, 1.0)
    return DatasetStats(
        bands=tuple(int(b) for b in bands), dtype=dtype, mean=tuple(float(m * scale) for m in mean),
        std=tuple(float(v * scale) for v in std), scale=scale,
        change_fraction=changed / labelled if labelled else 0.0, label_values=values, samples_scanned=len(chosen),
    )
