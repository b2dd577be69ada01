"""Training batches: seeded paired-augmented crops and each worker's share of an epoch.

An item is ``(epoch, index)``; ``index // crops_per_image`` names the pair and the
augmentation is seeded by ``(seed, epoch, index)``, so a batch depends only on those
numbers: not on the loader processes, the worker that draws it, or an interruption.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch

from models import WeightsMeta
from pipeline.learn.augment import Augment, geometric, photometric, random_crop
from pipeline.learn.datasets import Sample, read_labelled, read_pair
from pipeline.learn.labels import LabelValues
from pipeline.learn.predict import normalize


class CropDataset(torch.utils.data.Dataset):
    """Random crops of the training pairs: ``(x (2, C, S, S) float32, change (S, S) uint8, valid (S, S) bool)``.

    Pairs are read through :mod:`pipeline.io` and kept in a small in-process cache
    (``cache_mb``), so a pair cut into several crops per epoch is read once.
    """

    def __init__(self, samples: Sequence[Sample], meta: WeightsMeta, label_values: LabelValues, *, crop: int,
                 crops_per_image: int = 1, augment: Augment | None = None, seed: int = 0,
                 cache_mb: int = 512) -> None:
        self.samples = list(samples)
        self.meta = meta
        self.bands = meta.bands
        self.label_values = label_values
        self.crop = crop
        self.crops_per_image = crops_per_image
        self.augment = augment or Augment.none()
        self.seed = seed
        self._cache: OrderedDict[int, tuple] = OrderedDict()
        self._cache_bytes = 0
        self._cache_cap = cache_mb * 1024 * 1024

    def __len__(self) -> int:
        return len(self.samples) * self.crops_per_image

    def _read(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        s = self.samples[i]
        pair, valid = read_pair(s, self.bands)
        change, labelled = read_labelled(s, self.label_values, pair.shape[-2:])
        item = (pair, change, valid & labelled)
        size = sum(a.nbytes for a in item)
        while self._cache and self._cache_bytes + size > self._cache_cap:
            _, old = self._cache.popitem(last=False)
            self._cache_bytes -= sum(a.nbytes for a in old)
        if size <= self._cache_cap:
            self._cache[i] = item
            self._cache_bytes += size
        return item

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        rng = np.random.default_rng([self.seed, epoch, index])
        pair, change, valid = self._read(index // self.crops_per_image)
        pair, change, valid = random_crop(pair, change, valid, self.crop, rng)
        x = normalize(pair, self.meta)
        x, change, valid = geometric(x, change, valid, self.augment, rng)
        x = photometric(x, self.augment, rng)
        return (torch.from_numpy(np.ascontiguousarray(x, dtype="float32")),
                torch.from_numpy(np.ascontiguousarray(change, dtype="uint8")),
                torch.from_numpy(np.ascontiguousarray(valid)))


def steps_per_epoch(n_items: int, world: int, batch_size: int) -> int:
    """Optimiser steps per epoch: every worker takes the same number of full batches."""
    return max(1, -(-n_items // world) // batch_size)


def epoch_items(n_items: int, epoch: int, seed: int, rank: int, world: int, batch_size: int,
                skip_steps: int = 0) -> list[tuple[int, int]]:
    """This worker's items of one epoch: a seeded shuffle, dealt round-robin, cut into full batches.

    Every worker gets ``steps_per_epoch`` full batches (items repeat when the data is
    smaller than that), so distributed workers step together; ``skip_steps`` drops the
    batches a resumed run has already done.
    """
    perm = np.random.default_rng([seed, epoch]).permutation(n_items)
    per_rank = -(-n_items // world)
    shard = np.resize(perm, per_rank * world)[rank::world]
    steps = steps_per_epoch(n_items, world, batch_size)
    take = np.resize(shard, steps * batch_size)[skip_steps * batch_size:]
    return [(epoch, int(i)) for i in take]
