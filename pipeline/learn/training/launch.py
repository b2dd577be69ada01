"""Start, resume and dispatch a training run: in this process, or on N Ray Train workers (TorchTrainer).

torch, the model zoo and the loop are imported when a run starts: the CLI imports this module
(through :mod:`pipeline.learn.training`) to build its parser.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.learn.training import report, state
from pipeline.learn.training.config import RUNTIME_FIELDS, TrainConfig, TrainConfigError

if TYPE_CHECKING:
    from pipeline.learn.training.plan import TrainPlan


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def resume_config(out: str, given: Mapping[str, Any]) -> TrainConfig:
    """The saved configuration of the run in ``out``, with the runtime options in ``given`` applied.

    Options that change what is learnt (data, model, learning rate, ...) cannot change on
    resume: a differing value is an error naming it.
    """
    run_dir = Path(out).resolve()
    if not (run_dir / state.CONFIG).exists():
        raise TrainConfigError(f"--resume: {run_dir} holds no training run ({state.CONFIG} is missing); "
                               "start one without --resume")
    saved, _ = state.read_config(run_dir)
    cfg = TrainConfig.from_dict({**saved, "out": str(run_dir), "resume": True})
    asked = cfg.replace(**{**given, "out": str(run_dir), "resume": True})  # the options given, read as the saved ones
    conflicts = [k for k in given if k not in RUNTIME_FIELDS and k != "out" and getattr(asked, k) != getattr(cfg, k)]
    if conflicts:
        k = conflicts[0]
        raise TrainConfigError(
            f"--resume continues {run_dir} with its saved options, but --{k.replace('_', '-')} {given[k]} differs "
            f"from the saved {saved.get(k)}; drop the option or start a new run folder")
    return cfg.replace(**{**{k: v for k, v in given.items() if k in RUNTIME_FIELDS}, "resume": True})


def prepare(cfg: TrainConfig) -> tuple[TrainConfig, TrainPlan]:
    """The run folder, configuration and plan: saved for a new run, read back for a resumed one."""
    from pipeline.learn.training.plan import TrainPlan, make_plan

    out = Path(cfg.out).resolve()
    cfg = cfg.replace(out=str(out))
    if cfg.weights and "://" not in cfg.weights and Path(cfg.weights).is_file():
        cfg = cfg.replace(weights=str(Path(cfg.weights).resolve()))  # workers run elsewhere
    if cfg.resume:
        if not (out / state.CONFIG).exists():
            raise TrainConfigError(f"--resume: {out} holds no training run; start one without --resume")
        _, plan = state.read_config(out)
        return cfg, TrainPlan.from_dict(plan)
    if (out / state.CONFIG).exists() or (out / state.LAST).exists():
        raise TrainConfigError(f"{out} already holds a training run; pass --resume to continue it or choose "
                               "another --out")
    out.mkdir(parents=True, exist_ok=True)
    plan = make_plan(cfg)
    state.write_config(out, cfg.to_dict(), plan.to_dict())
    return cfg, plan


def describe(cfg: TrainConfig, plan: TrainPlan) -> str:
    """One paragraph on what the run trains with."""
    m = plan.meta
    return (f"changemap train: {plan.model} ({m.model_args}) from {cfg.weights or 'random initialisation'}; "
            f"{len(plan.train)} training pair(s), {len(plan.val)} validation pair(s); bands {m.bands}, "
            f"normalisation {plan.normalization} (scale {m.scale:.4g}, mean {tuple(round(v, 4) for v in m.mean)}, "
            f"std {tuple(round(v, 4) for v in m.std)}); change {100 * plan.change_fraction:.1f} % of labelled "
            f"pixels, change weight {plan.change_weight:.2f}; {cfg.num_workers} worker(s) -> {cfg.out}")


def train(cfg: TrainConfig, callback: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Run (or resume) a training run; returns the best epoch's record and the history.

    One worker without a Ray address trains in this process (CUDA when available);
    otherwise Ray Train runs ``num_workers`` data-parallel workers (gloo on CPU, NCCL on GPU).
    """
    import torch

    from pipeline.learn.training import loop

    cfg, plan = prepare(cfg)
    _say(describe(cfg, plan))
    if not cfg.distributed:
        cuda = torch.cuda.is_available() and cfg.gpus_per_worker != 0
        if cfg.gpus_per_worker and not torch.cuda.is_available():
            raise TrainConfigError(f"--gpus-per-worker {cfg.gpus_per_worker} but this machine has no CUDA GPU")
        return loop.run(cfg, plan, device=torch.device("cuda" if cuda else "cpu"), callback=callback)
    _ray_train(cfg, plan)
    out = Path(cfg.out)
    return {"best": json.loads((out / state.BEST_INFO).read_text()),
            "history": report.read_metrics(out / state.METRICS), "run_dir": str(out)}


def _ray_worker(config: dict) -> None:
    """``train_loop_per_worker`` of the TorchTrainer: the same loop, inside Ray's process group."""
    import ray.train
    import ray.train.torch
    import torch

    from pipeline.learn.training import loop
    from pipeline.learn.training.plan import TrainPlan

    cfg = TrainConfig.from_dict(config["config"])
    plan = TrainPlan.from_dict(config["plan"])
    torch.set_num_threads(cfg.cpus_per_worker)
    device = ray.train.torch.get_device() if cfg.gpus_per_worker else torch.device("cpu")
    result = loop.run(cfg, plan, device=device)
    ray.train.report({"best_score": float(result["best"]["score"]), "epochs": len(result["history"])})


def _ray_train(cfg: TrainConfig, plan: TrainPlan) -> None:
    import ray
    import ray.train

    from pipeline.errors import ChangemapError
    from pipeline.session import start_ray

    started = start_ray(cfg.ray_address)
    try:
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        gpus = cfg.gpus_per_worker or 0
        have = ray.cluster_resources()
        need = {"CPU": cfg.num_workers * cfg.cpus_per_worker, "GPU": cfg.num_workers * gpus}
        short = [f"{need[k]:g} {k}s (the cluster has {have.get(k, 0):g})" for k in need if need[k] > have.get(k, 0)]
        if short:  # workers that cannot be placed would wait forever
            raise ChangemapError(f"--num-workers {cfg.num_workers} with --cpus-per-worker {cfg.cpus_per_worker} and "
                                 f"--gpus-per-worker {gpus:g} need {', '.join(short)}; ask for fewer workers or "
                                 "attach a bigger cluster (--ray-address)")
        resources = {"CPU": cfg.cpus_per_worker, **({"GPU": gpus} if gpus else {})}
        trainer = TorchTrainer(
            _ray_worker,
            train_loop_config={"config": cfg.to_dict(), "plan": plan.to_dict()},
            scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=gpus > 0,
                                         resources_per_worker=resources),
            run_config=RunConfig(name="ray-train", storage_path=str(Path(cfg.out) / "ray"),
                                 failure_config=FailureConfig(max_failures=0)),
        )
        failed = getattr(ray.train, "TrainingFailedError", RuntimeError)
        try:
            trainer.fit()
        except failed as exc:  # one paragraph with the workers' own error, not Ray's traceback
            raise ChangemapError(f"Ray Train workers failed: {str(exc).strip()[-1500:]}") from exc
    finally:
        if started:
            ray.shutdown()
