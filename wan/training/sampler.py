"""Batches that each hold one resolution, interleaved in proportion to the data, reproducible per epoch."""

from __future__ import annotations

import numpy as np
from torch.utils.data import Sampler


class ResolutionBatchSampler(Sampler[list[int]]):
    """Index batches over a ConcatDataset of per-resolution datasets of `sizes`.

    Every batch comes from one dataset (frames of one size stack); the order of all batches is shuffled,
    so each resolution appears in proportion to its data. Depends only on (seed, epoch).
    """

    def __init__(self, sizes: list[int], batch_size: int, seed: int = 0) -> None:
        self.sizes, self.batch_size, self.seed, self.epoch = list(sizes), batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        batches, offset = [], 0
        for size in self.sizes:
            order = rng.permutation(size) + offset
            usable = (
                len(order) - len(order) % self.batch_size if len(order) >= self.batch_size else len(order)
            )
            batches += [order[i : i + self.batch_size].tolist() for i in range(0, usable, self.batch_size)]
            offset += size
        return [batches[i] for i in rng.permutation(len(batches))]

    def __iter__(self):
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())
