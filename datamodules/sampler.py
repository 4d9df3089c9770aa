"""The training order: a function of (seed, epoch) only, so a resumed run trains on what the uninterrupted run did.

A ``RandomSampler`` draws its order from the global RNG when the epoch's iterator is created, so a run resumed from
a checkpoint (a new process, seeded once at start) sees other batches than the run left alone (issue: exact
resume). ``EpochSampler`` is torch's ``DistributedSampler`` (permutation seeded by ``seed + epoch``, every rank its
share), built for every world size, 1 included: Lightning leaves a ``DistributedSampler`` in place and calls
``set_epoch`` before each epoch. A mid-epoch checkpoint resumes with ``skip``: the batches already trained on in
that epoch are not drawn again. ``train_loader`` also gives the loader its own generator, so creating the epoch's
iterator (which draws the workers' base seed) never touches the global RNG the training step draws from.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler


class EpochSampler(DistributedSampler):
    """``DistributedSampler(shuffle=True, seed=seed)`` on every world size, and ``skip(n)``: the next epoch's
    iterator starts ``n`` samples later (a mid-epoch resume)."""

    def __init__(
        self,
        dataset: Dataset,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        loader_generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self._skip = 0
        self.loader_generator = loader_generator  # reseeded each epoch: the workers' seeds depend on the epoch only

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if self.loader_generator is not None:
            self.loader_generator.manual_seed(self.seed + 1_000_003 * (epoch + 1))

    def skip(self, samples: int) -> None:
        """Leave out the first ``samples`` of this rank's next iterator (once)."""
        self._skip = int(samples)

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        skip, self._skip = self._skip, 0
        return iter(indices[skip:])


def train_loader(
    ds: Dataset,
    batch_size: int,
    trainer: Any,
    seed: int,
    num_workers: int,
    collate_fn: Callable[[list[Any]], Any],
) -> DataLoader:
    """The training loader: ``EpochSampler`` over the trainer's ranks, incomplete last batches dropped, and a
    generator of its own (worker seeds from ``seed``, not from the global RNG)."""
    world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        ds,
        batch_size=batch_size,
        sampler=EpochSampler(ds, num_replicas=world, rank=rank, seed=seed, loader_generator=generator),
        num_workers=num_workers,
        collate_fn=collate_fn,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
        drop_last=True,
        generator=generator,
    )
