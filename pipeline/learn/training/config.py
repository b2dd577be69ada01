"""The frozen, validated configuration of one training run (saved as RUN_DIR/config.json).

:class:`TrainConfig` is a :class:`pipeline.config.Frozen` object like the run's: each option is
declared once, with its help text, and ``changemap train`` derives its command-line options from
the fields (:mod:`pipeline.cli.options`). Nothing here imports torch, so the CLI can build its
parser without it.
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import field_validator, model_validator

from pipeline.config import ConfigError, Frozen, option

SCHEDULES = ("poly", "cosine")
LOSS_NAMES = ("ce", "dice", "ce+dice")  # pipeline.learn.losses.LOSSES (not imported: it needs torch)
# Options that say where and how fast to run, not what to learn: a resumed run may change them.
RUNTIME_FIELDS = ("num_workers", "gpus_per_worker", "cpus_per_worker", "ray_address", "loader_workers",
                  "resume", "checkpoint_every")


class TrainConfigError(ConfigError):
    """A training option that cannot work."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


class TrainConfig(Frozen):
    """Everything ``changemap train`` needs; each field's help says what it does.

    Notes beyond the help: ``val`` None uses the dataset's ``val`` split, else ``val_fraction`` of
    the training pairs held out (seeded); ``swap`` None is 0.5 from scratch and 0 from initial
    weights (they learnt which date comes first: TinyCD's LEVIR weights score F1 0.15 on swapped
    pairs); ``change_weight`` ``auto`` is the square root of the no-change/change ratio of the
    training data; one worker without a Ray address trains in-process.
    """

    what: ClassVar[str] = "training options"

    model: str = option(..., "registered model or model config file (default with --weights CKPT: the "
                             "checkpoint's model)", required=False)
    data: str = option(..., "training dataset: LEVIR-CD layout folder or CSV/JSONL manifest", required=False)
    out: str = option(..., "run folder: best.pt, last.pt, metrics.csv, curve.png, config.json")
    weights: str | None = option(None, "initial weights: known name (e.g. levir), checkpoint or URL "
                                       "(default: random)")
    split: str | None = option(None, "training split (default: 'train' when the dataset has one, else all pairs)")
    val: str | None = option(None, "validation dataset, or 'none' (default: the dataset's 'val' split, else a "
                                   "held-out fraction)")
    val_split: str | None = option(None, "split of the validation dataset")
    val_fraction: float = option(0.2, "pairs held out for validation without a val split (0.2)")
    epochs: int = option(10, "epochs (default 10)")
    batch_size: int = option(8, "crops per step and worker (default 8)")
    crop: int = option(256, "random crop side in pixels (default 256)")
    crops_per_image: int = option(1, "crops drawn from each pair per epoch (default 1)")
    lr: float = option(1e-3, "AdamW learning rate (default 1e-3; fine-tuning: try 1e-4)")
    weight_decay: float = option(0.01, "AdamW weight decay (default 0.01)")
    schedule: Literal["poly", "cosine"] = option("poly", "decay after the warm-up (default poly)")
    warmup: float = option(0.05, "linear warm-up, as a fraction of all steps (default 0.05)")
    loss: Literal["ce", "dice", "ce+dice"] = option("ce+dice", "cross-entropy (BCE for 1 output), Dice, or "
                                                               "their sum (default)")
    change_weight: float | Literal["auto"] = option(
        "auto", "weight of change pixels in the cross-entropy: a number or auto (sqrt of the no-change/change "
                "ratio, default)")
    bands: tuple[int, ...] | None = option(None, "1-based input bands (default: the weights', else all)")
    mean: tuple[float, ...] | None = option(None, "normalisation mean per band of raw*scale (default: the "
                                                  "weights', else computed from the training data)")
    std: tuple[float, ...] | None = option(None, "normalisation std per band (with --mean)")
    label_values: str | None = option(None, "NO_CHANGE,CHANGE[,NODATA] (default: recognised: 0/255, 0/1, 1/2)")
    num_classes: Literal[1, 2] | None = option(None, "outputs of a model trained from scratch")
    augment: bool = option(True, "random crops only")  # the CLI's --no-augment
    swap: float | None = option(None, "temporal-swap probability (default 0.5 from scratch, 0 from weights)")
    seed: int = option(0, "seed of initialisation, shuffling and augmentation (default 0)")
    amp: bool = option(True, "no mixed precision on CUDA")  # the CLI's --no-amp
    clip_grad: float | None = option(None, "clip the gradient norm to this value")
    num_workers: int = option(1, "data-parallel workers (Ray Train); default 1 (in-process)")
    gpus_per_worker: float | None = option(None, "GPUs per worker (default: 0 on Ray, the GPU if any "
                                                 "in-process)")
    cpus_per_worker: int = option(1, "CPUs per Ray Train worker (default 1)")
    ray_address: str | None = option(None, "train on this Ray cluster (default: a local runtime when "
                                           "--num-workers > 1)")
    loader_workers: int = option(0, "data-loading processes per worker (default 0)")
    checkpoint_every: int = option(0, "also save last.pt every N steps (default: each epoch)")
    val_tile: int = option(0, "validate in tiles of this side (default 0: whole images)")
    val_halo: int = option(64, "context margin of validation tiles (default 64)")
    resume: bool = option(False, "continue the run in --out from its last.pt")

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except TrainConfigError:
            raise
        except ConfigError as exc:  # Frozen's one paragraph, as the training error callers catch
            raise TrainConfigError(*exc.args) from None

    @field_validator("model", "data", "out")
    @classmethod
    def _given(cls, v: str, info) -> str:
        if not v:
            raise ValueError(f"{_flag(info.field_name)} is required")
        return v

    @field_validator("epochs", "batch_size", "crops_per_image")
    @classmethod
    def _at_least_one(cls, v: int, info) -> int:
        if v < 1:
            raise ValueError(f"{_flag(info.field_name)} must be at least 1, got {v}")
        return v

    @field_validator("crop")
    @classmethod
    def _crop(cls, v: int) -> int:
        if v < 16 or v % 16:
            raise ValueError(f"--crop must be a multiple of 16 (at least 16), got {v}")
        return v

    @field_validator("schedule", "loss", mode="before")
    @classmethod
    def _choice(cls, v: Any, info) -> Any:
        choices = SCHEDULES if info.field_name == "schedule" else LOSS_NAMES
        if v not in choices:
            raise ValueError(f"{_flag(info.field_name)} must be one of {', '.join(choices)}, got {v!r}")
        return v

    @field_validator("warmup")
    @classmethod
    def _warmup(cls, v: float) -> float:
        if not 0 <= v < 1:
            raise ValueError(f"--warmup is a fraction of all steps in [0, 1), got {v}")
        return v

    @field_validator("change_weight", mode="before")
    @classmethod
    def _change_weight(cls, v: Any) -> Any:
        if v == "auto":
            return v
        try:
            number = float(v)
        except (TypeError, ValueError):
            number = float("nan")
        if isinstance(v, bool) or not number > 0:
            raise ValueError(f"--change-weight takes a positive number or auto, got {v!r}")
        return number

    @field_validator("val_fraction")
    @classmethod
    def _val_fraction(cls, v: float) -> float:
        if not 0 < v < 1:
            raise ValueError(f"--val-fraction must lie in (0, 1), got {v}")
        return v

    @field_validator("bands")
    @classmethod
    def _bands(cls, v: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if v is not None and (not v or min(v) < 1):
            raise ValueError(f"--bands are 1-based band numbers, got {v}")
        return v

    @field_validator("swap")
    @classmethod
    def _swap(cls, v: float | None) -> float | None:
        if v is not None and not 0 <= v <= 1:
            raise ValueError(f"--swap is a probability in [0, 1], got {v}")
        return v

    @field_validator("num_classes", mode="before")
    @classmethod
    def _num_classes(cls, v: Any) -> Any:
        if v not in (None, 1, 2) or isinstance(v, bool):
            raise ValueError(f"--num-classes must be 1 (sigmoid) or 2 (softmax), got {v}")
        return v

    @field_validator("gpus_per_worker")
    @classmethod
    def _gpus(cls, v: float | None) -> float | None:
        if v is not None and v < 0:
            raise ValueError(f"--gpus-per-worker must be non-negative, got {v}")
        return v

    @field_validator("clip_grad")
    @classmethod
    def _clip_grad(cls, v: float | None) -> float | None:
        if v is not None and v <= 0:
            raise ValueError(f"--clip-grad must be positive, got {v}")
        return v

    @model_validator(mode="after")
    def _together(self) -> TrainConfig:
        """The checks that read several options (each says every option it names)."""
        if not self.lr > 0 or self.weight_decay < 0:
            raise ValueError(f"--lr must be positive and --weight-decay non-negative, got {self.lr} and "
                             f"{self.weight_decay}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("give --mean and --std together (or neither: they are computed from the training data)")
        if self.mean is not None and len(self.mean) != len(self.std):
            raise ValueError(f"--mean has {len(self.mean)} values but --std {len(self.std)}")
        if self.bands is not None and self.mean is not None and len(self.mean) != len(self.bands):
            raise ValueError(f"--mean/--std need one value per band ({len(self.bands)}), got {len(self.mean)}")
        if self.num_workers < 1 or self.cpus_per_worker < 1 or self.loader_workers < 0:
            raise ValueError("--num-workers and --cpus-per-worker must be at least 1, --loader-workers at least 0")
        if self.checkpoint_every < 0 or self.val_tile < 0 or self.val_halo < 0:
            raise ValueError("--checkpoint-every, --val-tile and --val-halo must be non-negative")
        return self

    @property
    def distributed(self) -> bool:
        """Whether the run goes through Ray Train (several workers or a cluster)."""
        return self.num_workers > 1 or bool(self.ray_address)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (validated like a new configuration)."""
        return type(self)(**{**self.model_dump(), **changes})
