"""The training loop every worker runs: one process alone, or one of N data-parallel Ray Train workers.

Each epoch: this worker's share of seeded augmented crops -> AdamW steps (AMP + GradScaler
on CUDA) under a warm-up + poly/cosine schedule; then validation on whole images, with the
confusion and probability histograms summed over the workers, which gives the threshold
that maximises validation F1. Worker 0 writes the run folder: ``last.pt`` (resume state),
``best.pt``/``best.json``, ``metrics.csv`` and ``curve.png``.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

import models
from models.base import change_probability
from pipeline.io.fs import download
from pipeline.learn.augment import Augment
from pipeline.learn.datasets import read_labelled, read_pair
from pipeline.learn.losses import ChangeLoss
from pipeline.learn.metrics import Confusion
from pipeline.learn.predict import normalize, predict_image
from pipeline.learn.training import report, state
from pipeline.learn.training.config import TrainConfig
from pipeline.learn.training.data import CropDataset, epoch_items, steps_per_epoch
from pipeline.learn.training.plan import TrainPlan, with_threshold
from pipeline.learn.training.schedule import make_scheduler

HIST_BINS = 100  # validation thresholds are searched on a 0.01 grid
THRESHOLD_RANGE = (0.05, 0.95)


class StopTraining(Exception):
    """Raised by a callback to stop a run as a kill would (tests use it to interrupt a run)."""


@dataclass(frozen=True)
class Workers:
    """This process's place among the data-parallel workers."""

    rank: int
    world: int
    device: torch.device

    @classmethod
    def detect(cls, device: torch.device) -> Workers:
        """From an initialised torch.distributed process group (Ray Train sets one up), else alone."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), device)
        return cls(0, 1, device)

    @property
    def main(self) -> bool:  # noqa: D102
        return self.rank == 0

    def all_sum(self, values) -> np.ndarray:
        """Element-wise sum over the workers (float64; counts stay exact below 2**53)."""
        a = np.asarray(values, dtype="float64")
        if self.world == 1:
            return a
        t = torch.from_numpy(a.copy()).to(self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return t.cpu().numpy()

    def barrier(self) -> None:  # noqa: D102
        if self.world > 1:
            dist.barrier()


def augmentation(cfg: TrainConfig) -> Augment:
    """The paired augmentations of a run (see :attr:`TrainConfig.swap` for the temporal swap's default)."""
    if not cfg.augment:
        return Augment.none()
    swap = cfg.swap if cfg.swap is not None else (0.0 if cfg.weights not in (None, "none", "random") else 0.5)
    return Augment(swap=swap)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and normalisation weights (1-d tensors), as usual for AdamW."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def best_threshold(hist_pos: np.ndarray, hist_neg: np.ndarray) -> tuple[float, Confusion]:
    """The threshold on the histogram grid that maximises F1 (ties: nearest 0.5) and its confusion.

    ``hist_pos``/``hist_neg`` count change/no-change pixels per probability bin of width
    1/HIST_BINS; predicting change for ``p >= k / HIST_BINS`` keeps bins ``k`` and above.
    """
    pos, neg = hist_pos.sum(), hist_neg.sum()
    tp = np.cumsum(hist_pos[::-1])[::-1]  # tp[k]: change pixels with p in bins >= k
    fp = np.cumsum(hist_neg[::-1])[::-1]
    lo, hi = (int(round(t * HIST_BINS)) for t in THRESHOLD_RANGE)
    ks = sorted(range(lo, hi + 1), key=lambda k: abs(k - HIST_BINS // 2))
    f1 = {k: 2 * tp[k] / (tp[k] + fp[k] + pos) if tp[k] + fp[k] + pos else 1.0 for k in ks}
    k = max(ks, key=lambda k: f1[k])  # max() keeps the first, i.e. nearest 0.5, of equal scores
    c = Confusion(int(tp[k]), int(fp[k]), int(pos - tp[k]), int(neg - fp[k]))
    return k / HIST_BINS, c


def validate(model: torch.nn.Module, plan: TrainPlan, cfg: TrainConfig, workers: Workers) -> dict[str, Any]:
    """Validation scores over all workers: at the best threshold and at 0.5."""
    net = _unwrap(model).eval()
    hist = np.zeros((2, HIST_BINS))
    for s in plan.val[workers.rank::workers.world]:
        pair, valid = read_pair(s, plan.meta.bands)
        prob = predict_image(net, normalize(pair, plan.meta), device=workers.device, tile=cfg.val_tile,
                             halo=cfg.val_halo)
        change, labelled = read_labelled(s, plan.label_values, pair.shape[-2:])
        keep = valid & labelled
        for row, m in enumerate((change & keep, ~change & keep)):
            hist[row] += np.histogram(prob[m], bins=HIST_BINS, range=(0.0, 1.0))[0]
    hist = workers.all_sum(hist)
    threshold, c = best_threshold(hist[0], hist[1])
    _, c05 = best_threshold_at(hist, 0.5)
    return {"val_f1": c.f1, "val_precision": c.precision, "val_recall": c.recall, "val_iou": c.iou,
            "val_overall_accuracy": c.overall_accuracy, "val_kappa": c.kappa, "val_threshold": threshold,
            "val_f1_at_0.5": c05.f1}


def best_threshold_at(hist: np.ndarray, threshold: float) -> tuple[float, Confusion]:
    """The confusion of the histogram at one threshold."""
    k = int(round(threshold * HIST_BINS))
    tp, fp = hist[0, k:].sum(), hist[1, k:].sum()
    return threshold, Confusion(int(tp), int(fp), int(hist[0].sum() - tp), int(hist[1].sum() - fp))


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@dataclass
class _Training:
    """What one worker's run holds and changes as it goes: the model, its optimiser, and where it stands."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    loss_fn: ChangeLoss
    dataset: CropDataset
    per_epoch: int
    use_amp: bool
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    history: list[dict] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"score": -1.0})
    # loss sum, batches, tp, fp, fn, tn (this worker's, since the epoch began)
    acc: np.ndarray = field(default_factory=lambda: np.zeros(6))
    seconds_before: float = 0.0
    start: float = 0.0

    def seconds(self) -> float:
        """Training time of the run so far, over all its sessions."""
        return self.seconds_before + time.perf_counter() - self.start


def run(cfg: TrainConfig, plan: TrainPlan, *, device: torch.device | None = None,
        callback: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Train (or resume) the run in ``cfg.out``; returns worker 0's summary of the best epoch."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    workers = Workers.detect(device)
    out = Path(cfg.out)
    torch.manual_seed(cfg.seed)
    t = _setup(cfg, plan, workers)
    _restore(t, cfg, workers, out)
    t.start = time.perf_counter()
    while t.epoch < cfg.epochs:
        _train_epoch(t, cfg, workers, out, callback)
        _end_epoch(t, cfg, plan, workers, out, callback)
    return {"best": t.best, "history": t.history, "run_dir": str(out)}


def _build_model(cfg: TrainConfig, plan: TrainPlan, workers: Workers) -> torch.nn.Module:
    """The model on this worker's device: the initial weights or a seeded initialisation; DDP with several workers."""
    device = workers.device
    if cfg.weights not in (None, "none", "random"):
        model = models.create_model(plan.model, in_channels=plan.meta.in_channels, weights=cfg.weights,
                                     fetch=download)
    else:
        model = models.create_model(plan.model, **dict(plan.meta.model_args))
    model.to(device)
    if workers.world > 1:
        if device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    return model


def _setup(cfg: TrainConfig, plan: TrainPlan, workers: Workers) -> _Training:
    """A new run's model, optimiser, schedule, loss and crops (at epoch 0)."""
    use_amp = cfg.amp and workers.device.type == "cuda"
    model = _build_model(cfg, plan, workers)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr)
    dataset = CropDataset(plan.train, plan.meta, plan.label_values, crop=cfg.crop,
                          crops_per_image=cfg.crops_per_image, augment=augmentation(cfg), seed=cfg.seed)
    per_epoch = steps_per_epoch(len(dataset), workers.world, cfg.batch_size)
    return _Training(model=model, optimizer=optimizer,
                     scheduler=make_scheduler(optimizer, per_epoch * cfg.epochs, cfg.warmup, cfg.schedule),
                     scaler=torch.amp.GradScaler("cuda", enabled=use_amp),
                     loss_fn=ChangeLoss(cfg.loss, plan.change_weight), dataset=dataset, per_epoch=per_epoch,
                     use_amp=use_amp)


def _restore(t: _Training, cfg: TrainConfig, workers: Workers, out: Path) -> None:
    """Continue from ``last.pt`` when resuming; seed each worker's RNG."""
    if not (cfg.resume and (out / state.LAST).exists()):
        if workers.rank:
            torch.manual_seed(cfg.seed + 1000 * workers.rank)
        return
    saved = state.load_last(out, workers.device)
    _unwrap(t.model).load_state_dict(saved["model"])
    t.optimizer.load_state_dict(saved["optimizer"])
    t.scheduler.load_state_dict(saved["scheduler"])
    t.scaler.load_state_dict(saved["scaler"])
    t.epoch, t.step_in_epoch, t.global_step = (int(saved["epoch"]), int(saved["step_in_epoch"]),
                                               int(saved["global_step"]))
    t.history, t.best = list(saved["history"]), dict(saved["best"])
    t.seconds_before = float(saved["seconds"])
    if workers.main:  # the sums saved were already summed over the workers
        t.acc = saved["acc"].cpu().numpy().astype("float64")
        torch.set_rng_state(saved["rng"].cpu())
    else:
        torch.manual_seed(cfg.seed + 1000 * workers.rank + t.global_step)
    if workers.main:
        _say(f"changemap train: resuming {out} at epoch {t.epoch + 1}, step {t.step_in_epoch} of {t.per_epoch}")


def _save_last(t: _Training, out: Path, next_epoch: int, next_step: int, acc_total: np.ndarray) -> None:
    """``last.pt``: everything a resumed run needs to go on exactly as this one would."""
    state.save_last(out, {
        "model": _unwrap(t.model).state_dict(), "optimizer": t.optimizer.state_dict(),
        "scheduler": t.scheduler.state_dict(), "scaler": t.scaler.state_dict(), "epoch": next_epoch,
        "step_in_epoch": next_step, "global_step": t.global_step, "history": t.history, "best": t.best,
        "acc": torch.from_numpy(acc_total), "rng": torch.get_rng_state(), "seconds": t.seconds(),
    })


def _train_epoch(t: _Training, cfg: TrainConfig, workers: Workers, out: Path,
                 callback: Callable[[dict], None] | None) -> None:
    """This worker's remaining steps of the current epoch (``last.pt`` every ``checkpoint_every`` steps)."""
    device = workers.device
    t.model.train()
    items = epoch_items(len(t.dataset), t.epoch, cfg.seed, workers.rank, workers.world, cfg.batch_size,
                        t.step_in_epoch)
    # Its own generator: creating a loader must not draw from the global RNG (a resumed run
    # creates one at another point of the RNG stream than the run it continues).
    loader = torch.utils.data.DataLoader(t.dataset, batch_size=cfg.batch_size, sampler=items,
                                         num_workers=cfg.loader_workers, pin_memory=device.type == "cuda",
                                         generator=torch.Generator().manual_seed(cfg.seed))
    bar = _progress(workers, t.per_epoch, t.step_in_epoch, f"epoch {t.epoch + 1}/{cfg.epochs}")
    for x, target, valid in loader:
        loss = _step(t, cfg, *(v.to(device, non_blocking=True) for v in (x, target, valid)))
        t.step_in_epoch += 1
        t.global_step += 1
        if bar is not None:
            bar.set_postfix(loss=f"{t.acc[0] / t.acc[1]:.4f}", lr=f"{t.scheduler.get_last_lr()[0]:.2e}")
            bar.update(1)
        if callback:
            callback({"event": "step", "epoch": t.epoch, "step": t.step_in_epoch, "global_step": t.global_step,
                      "loss": loss})
        if cfg.checkpoint_every and t.global_step % cfg.checkpoint_every == 0 and t.step_in_epoch < t.per_epoch:
            total = workers.all_sum(t.acc)
            if workers.main:
                _save_last(t, out, t.epoch, t.step_in_epoch, total)
    if bar is not None:
        bar.close()


def _step(t: _Training, cfg: TrainConfig, x: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> float:
    """One optimiser step on a batch; adds its loss and confusion counts to ``t.acc``; returns the loss."""
    with torch.autocast("cuda", dtype=torch.float16) if t.use_amp else nullcontext():
        logits = t.model(x)
        loss = t.loss_fn(logits, target, valid)
    t.optimizer.zero_grad(set_to_none=True)
    t.scaler.scale(loss).backward()
    if cfg.clip_grad:
        t.scaler.unscale_(t.optimizer)
        torch.nn.utils.clip_grad_norm_(t.model.parameters(), cfg.clip_grad)
    t.scaler.step(t.optimizer)
    t.scaler.update()
    t.scheduler.step()
    with torch.no_grad():
        pred = change_probability(logits.detach().float()) > 0.5
        c, v = target.bool(), valid
        counts = [(pred & c & v).sum(), (pred & ~c & v).sum(), (~pred & c & v).sum(), (~pred & ~c & v).sum()]
    t.acc += [float(loss.detach()), 1.0, *(float(n) for n in counts)]
    return float(loss.detach())


def _end_epoch(t: _Training, cfg: TrainConfig, plan: TrainPlan, workers: Workers, out: Path,
               callback: Callable[[dict], None] | None) -> None:
    """The epoch's scores (validation too), then on worker 0: best.pt, last.pt, metrics.csv, curve.png."""
    total = workers.all_sum(t.acc)
    train_c = Confusion(*(int(n) for n in total[2:]))
    row = {"epoch": t.epoch + 1, "steps": t.global_step, "lr": t.scheduler.get_last_lr()[0],
           "train_loss": float(total[0] / max(total[1], 1)), "train_f1": train_c.f1}
    if plan.val:
        row.update(validate(t.model, plan, cfg, workers))
    row["seconds"] = t.seconds()
    t.history.append(row)
    score = row.get("val_f1", t.epoch)  # without validation the last epoch is the best
    t.epoch += 1
    t.step_in_epoch = 0
    t.acc = np.zeros(6)
    if workers.main:
        if score >= t.best["score"]:
            threshold = row.get("val_threshold", plan.meta.threshold)
            t.best = {"score": score, "epoch": row["epoch"], "threshold": threshold, "metrics": row}
            state.save_best(out, _unwrap(t.model), with_threshold(plan.meta, threshold), t.best)
        _save_last(t, out, t.epoch, 0, t.acc)
        report.write_metrics(out / state.METRICS, t.history)
        report.plot_curves(out / state.CURVE, t.history, f"{plan.model} on {Path(cfg.data).name}")
        _say(_epoch_line(row, cfg.epochs, t.best))
    workers.barrier()
    if callback:
        callback({"event": "epoch", **row})


def _epoch_line(row: dict, epochs: int, best: dict) -> str:
    text = (f"epoch {row['epoch']}/{epochs}: loss {row['train_loss']:.4f}, training F1 {row['train_f1']:.4f}")
    if "val_f1" in row:
        text += (f", validation F1 {row['val_f1']:.4f} at threshold {row['val_threshold']:.2f} "
                 f"(IoU {row['val_iou']:.4f}, kappa {row['val_kappa']:.4f})")
    mark = " *best*" if best.get("epoch") == row["epoch"] else ""
    return f"changemap train: {text}, {row['seconds']:.0f} s{mark}"


def _progress(workers: Workers, total: int, done: int, desc: str):
    """A tqdm bar on worker 0 when stderr is a terminal (None otherwise)."""
    if not workers.main or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc=desc, unit="step", leave=False, dynamic_ncols=True)
