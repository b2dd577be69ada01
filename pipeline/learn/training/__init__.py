"""Training change models: ``changemap train`` (see :func:`pipeline.learn.training.launch.train`).

Modules: ``config`` (the frozen options), ``plan`` (data, splits, normalisation, decided once),
``data`` (seeded augmented crops, each worker's share), ``schedule`` (warm-up + decay),
``loop`` (the per-worker loop and validation), ``state`` (run-folder files), ``report``
(metrics.csv, curve.png), ``launch`` (in-process or Ray Train).
"""
from pipeline.learn.training.config import TrainConfig, TrainConfigError
from pipeline.learn.training.launch import resume_config, train

__all__ = ["TrainConfig", "TrainConfigError", "resume_config", "train"]
