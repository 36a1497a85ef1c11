"""The callback's analysis data: this rank's exact share of a loader, and its first batch."""

from __future__ import annotations

import itertools
import math
from typing import Any, Iterable, Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, Subset

from pfa_lightning.errors import PFAError

ANALYSIS_SEED = 0  # the analysis subset is the same on every rank and every run
DEFAULT_BATCH_SIZE = 64


class EveryNth:
    """Batches ``rank, rank + world, ...`` of an iterable, for data that cannot be indexed."""

    def __init__(self, loader: Iterable, rank: int, world: int) -> None:
        self.loader, self.rank, self.world = loader, rank, world

    def __iter__(self) -> Iterator:
        return itertools.islice(iter(self.loader), self.rank, None, self.world)


class Converted:
    """Batches of ``loader`` passed through ``convert`` (the precision plugin's input conversion)."""

    def __init__(self, loader: Iterable, convert: Any) -> None:
        self.loader, self.convert = loader, convert

    def __iter__(self) -> Iterator:
        return (self.convert(batch) for batch in self.loader)

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]  # TypeError if unsized: callers handle it


def shard(loader: Iterable, rank: int, world: int, max_samples: int | None,
           min_per_rank: int = 0) -> tuple[Iterable, int | None]:
    """This rank's exact share of ``loader``'s data, and how many samples it may still take.

    Map-style data: a seeded random subset of ``max_samples`` indices (the same on every rank),
    split ``range(rank, n, world)`` with no padding duplicates. Other iterables: every
    ``world``-th batch, bounded to this rank's part of ``max_samples``.

    Raises:
        PFAError: (on every rank alike) map-style data too small to give each rank ``min_per_rank``.
    """
    dataset = getattr(loader, "dataset", None)
    if not isinstance(loader, DataLoader) or isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        limit = None if max_samples is None else math.ceil(max_samples / world)
        return (loader if world == 1 else EveryNth(loader, rank, world)), limit
    n = len(dataset)
    if min(n, max_samples or n) < min_per_rank * world:
        raise PFAError(f"The PFA analysis data has {n} samples; {world} process(es) need at least "
                         f"{min_per_rank * world} ({min_per_rank} each).")
    if max_samples is not None and max_samples < n:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(ANALYSIS_SEED))[:max_samples].tolist()
    else:
        order = list(range(n))
    shard = Subset(dataset, order[rank::world])
    return DataLoader(shard, batch_size=loader.batch_size or DEFAULT_BATCH_SIZE, shuffle=False,
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn), None


def single_loader(loaders: Any, what: str) -> Any:
    if isinstance(loaders, (list, tuple)):
        if len(loaders) != 1:
            raise PFAError(f"PFACallback cannot choose among {len(loaders)} {what} dataloaders; pass `dataloader=`.")
        return loaders[0]
    if isinstance(loaders, dict):
        raise PFAError(f"PFACallback cannot choose among several {what} dataloaders (a dict); pass `dataloader=`.")
    return loaders


def peek(loader: Iterable) -> Any:
    """The first batch of ``loader`` (two samples, without starting worker processes when possible)."""
    if isinstance(loader, DataLoader) and loader.batch_size and hasattr(loader.dataset, "__getitem__"):
        n = min(2, len(loader.dataset))  # type: ignore[arg-type]
        return loader.collate_fn([loader.dataset[i] for i in range(n)])  # type: ignore[misc]
    for batch in loader:
        return batch
    raise PFAError("The PFA analysis dataloader is empty.")


__all__ = ["Converted", "EveryNth", "peek", "shard", "single_loader"]
