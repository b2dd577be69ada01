"""The frozen, validated configuration of one training run (saved as RUN_DIR/config.json)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from pipeline.errors import ChangemapError
from pipeline.learn.losses import LOSSES

SCHEDULES = ("poly", "cosine")
# Options that say where and how fast to run, not what to learn: a resumed run may change them.
RUNTIME_FIELDS = ("num_workers", "gpus_per_worker", "cpus_per_worker", "ray_address", "loader_workers",
                  "resume", "checkpoint_every")



def frozen_from_dict(cls: type, d: Mapping[str, Any], error: type[Exception], what: str,
                     tuple_fields: tuple[str, ...] = ()) -> Any:
    """Build the frozen config ``cls`` from a JSON-like mapping: unknown keys are an error, lists become tuples."""
    known = {f.name for f in fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise error(f"unknown {what} {sorted(unknown)}; known: {sorted(known)}")
    kw = dict(d)
    for key in tuple_fields:
        if kw.get(key) is not None:
            kw[key] = tuple(kw[key])
    return cls(**kw)

class TrainConfigError(ChangemapError):
    """A training option that cannot work."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``changemap train`` needs.

    Attributes:
        model: registered name or model config file; data: dataset folder or manifest; out: run folder.
        weights: initial weights (known name, checkpoint, URL); None: random initialisation.
        split: training split of ``data`` (None: ``train`` when the dataset has one, else all of it).
        val: validation dataset, ``none`` for no validation, None: the dataset's ``val`` split, else
            ``val_fraction`` of the training pairs held out (seeded).
        crop, crops_per_image: random crop side and crops drawn from each pair per epoch.
        lr, weight_decay, schedule, warmup: AdamW, then ``poly``/``cosine`` decay after a linear
            warm-up over ``warmup`` (a fraction) of all steps.
        loss: ``ce``, ``dice`` or ``ce+dice``; change_weight: weight of change pixels in the
            cross-entropy, a number or ``auto`` (sqrt of the no-change/change ratio of the data).
        bands, mean, std: input bands (1-based) and normalisation; None: the initial weights'
            or computed from the training data.
        label_values: ``NO_CHANGE,CHANGE[,NODATA]``; None: recognised from the labels.
        num_classes: output convention for a model trained from scratch (1 sigmoid, 2 softmax).
        augment: paired augmentations (crops are always random); swap: probability of the
            temporal swap, None: 0.5 from scratch, 0 from initial weights (they learnt which date
            comes first: TinyCD's LEVIR weights score F1 0.15 on swapped pairs).
        amp: mixed precision on CUDA (ignored on CPU); clip_grad: max gradient norm.
        num_workers, gpus_per_worker, cpus_per_worker, ray_address: data-parallel workers
            (Ray Train) and their resources; one worker without an address runs in-process.
        checkpoint_every: also save ``last.pt`` every N steps (0: at the end of each epoch only).
        val_tile, val_halo: validate whole images (0) or in tiles with a halo.
    """

    model: str
    data: str
    out: str
    weights: str | None = None
    split: str | None = None
    val: str | None = None
    val_split: str | None = None
    val_fraction: float = 0.2
    epochs: int = 10
    batch_size: int = 8
    crop: int = 256
    crops_per_image: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.01
    schedule: str = "poly"
    warmup: float = 0.05
    loss: str = "ce+dice"
    change_weight: str = "auto"
    bands: tuple[int, ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    label_values: str | None = None
    num_classes: int | None = None
    augment: bool = True
    swap: float | None = None
    seed: int = 0
    amp: bool = True
    clip_grad: float | None = None
    num_workers: int = 1
    gpus_per_worker: float | None = None
    cpus_per_worker: int = 1
    ray_address: str | None = None
    loader_workers: int = 0
    checkpoint_every: int = 0
    val_tile: int = 0
    val_halo: int = 64
    resume: bool = False

    def __post_init__(self) -> None:
        def fail(msg: str) -> None:
            raise TrainConfigError(msg)

        for name in ("model", "data", "out"):
            if not getattr(self, name):
                fail(f"--{name} is required")
        if self.epochs < 1:
            fail(f"--epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            fail(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.crop < 16 or self.crop % 16:
            fail(f"--crop must be a multiple of 16 (at least 16), got {self.crop}")
        if self.crops_per_image < 1:
            fail(f"--crops-per-image must be at least 1, got {self.crops_per_image}")
        if not self.lr > 0 or self.weight_decay < 0:
            fail(f"--lr must be positive and --weight-decay non-negative, got {self.lr} and {self.weight_decay}")
        if self.schedule not in SCHEDULES:
            fail(f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not 0 <= self.warmup < 1:
            fail(f"--warmup is a fraction of all steps in [0, 1), got {self.warmup}")
        if self.loss not in LOSSES:
            fail(f"--loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.change_weight != "auto":
            try:
                ok = float(self.change_weight) > 0
            except ValueError:
                ok = False
            if not ok:
                fail(f"--change-weight takes a positive number or auto, got {self.change_weight!r}")
        if not 0 < self.val_fraction < 1:
            fail(f"--val-fraction must lie in (0, 1), got {self.val_fraction}")
        if (self.mean is None) != (self.std is None):
            fail("give --mean and --std together (or neither: they are computed from the training data)")
        if self.mean is not None and len(self.mean) != len(self.std):
            fail(f"--mean has {len(self.mean)} values but --std {len(self.std)}")
        if self.bands is not None and (not self.bands or min(self.bands) < 1):
            fail(f"--bands are 1-based band numbers, got {self.bands}")
        if self.bands is not None and self.mean is not None and len(self.mean) != len(self.bands):
            fail(f"--mean/--std need one value per band ({len(self.bands)}), got {len(self.mean)}")
        if self.swap is not None and not 0 <= self.swap <= 1:
            fail(f"--swap is a probability in [0, 1], got {self.swap}")
        if self.num_classes not in (None, 1, 2):
            fail(f"--num-classes must be 1 (sigmoid) or 2 (softmax), got {self.num_classes}")
        if self.num_workers < 1 or self.cpus_per_worker < 1 or self.loader_workers < 0:
            fail("--num-workers and --cpus-per-worker must be at least 1, --loader-workers at least 0")
        if self.gpus_per_worker is not None and self.gpus_per_worker < 0:
            fail(f"--gpus-per-worker must be non-negative, got {self.gpus_per_worker}")
        if self.checkpoint_every < 0 or self.val_tile < 0 or self.val_halo < 0:
            fail("--checkpoint-every, --val-tile and --val-halo must be non-negative")
        if self.clip_grad is not None and self.clip_grad <= 0:
            fail(f"--clip-grad must be positive, got {self.clip_grad}")

    @property
    def distributed(self) -> bool:
        """Whether the run goes through Ray Train (several workers or a cluster)."""
        return self.num_workers > 1 or bool(self.ray_address)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        return frozen_from_dict(cls, d, TrainConfigError, "training options", tuple_fields=("bands", "mean", "std"))
