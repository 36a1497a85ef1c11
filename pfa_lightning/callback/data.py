"""The callback's analysis data: the training set without random augmentation, this rank's exact
share of it, and its first batch."""

from __future__ import annotations

import copy
import itertools
import math
from typing import Any, Iterable, Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, Subset

from pfa_lightning.errors import PFAError
from pfa_lightning.nested import map_nested

ANALYSIS_SEED = 0  # the analysis subset is the same on every rank and every run
DEFAULT_BATCH_SIZE = 64


# torchvision transforms (v1 and v2) that draw random numbers; any class named Random* counts too
_RANDOM_TRANSFORMS = {"ColorJitter", "AutoAugment", "RandAugment", "TrivialAugmentWide", "AugMix", "GaussianBlur",
                      "ElasticTransform", "ScaleJitter"}


def _is_random(transform: Any) -> bool:
    name = type(transform).__name__
    return name.startswith("Random") or name in _RANDOM_TRANSFORMS


def without_augmentation(loader: Any) -> tuple[Any, str]:
    """``loader`` over the same samples with the random transforms of a torchvision-style ``Compose``
    removed (the dataset, or the one under ``Subset``s, is copied, not changed), and a description of
    the data for the log. Anything else, or a removal that would change the samples' shape (a
    ``RandomResizedCrop``), gives ``loader`` back as it is."""
    dataset = getattr(loader, "dataset", None)
    chain, base = [], dataset
    while isinstance(base, Subset):
        chain.append(base)
        base = base.dataset
    transform = getattr(base, "transform", None)
    steps = getattr(transform, "transforms", None)
    name = type(base).__name__
    augmented = f"the training data ({name}, with its random augmentation)"
    if not isinstance(loader, DataLoader) or not isinstance(steps, list) or not any(map(_is_random, steps)):
        random = transform is not None and _is_random(transform)
        return loader, augmented if random else f"the training data ({name})"
    dropped = [type(t).__name__ for t in steps if _is_random(t)]
    plain = copy.copy(base)
    plain.transform = type(transform)([t for t in steps if not _is_random(t)])
    if type(getattr(base, "transforms", None)).__name__ == "StandardTransform":  # torchvision's VisionDataset
        plain.transforms = type(base.transforms)(plain.transform, getattr(base, "target_transform", None))
    if len(base) and _shape(plain[0]) != _shape(base[0]):
        return loader, augmented + f" (without {', '.join(dropped)} the samples change shape)"
    for subset in reversed(chain):
        plain = Subset(plain, subset.indices)
    loader = DataLoader(plain, batch_size=loader.batch_size or DEFAULT_BATCH_SIZE, shuffle=False,
                        num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory)
    return loader, f"the training data ({name}) without its random augmentation ({', '.join(dropped)})"


def _shape(sample: Any) -> Any:
    return map_nested(sample, lambda t: tuple(t.shape), other=lambda x: getattr(x, "size", None))


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
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory), None


def request_fit_data(trainer: Any) -> None:
    """Set up the fit's train and validation dataloaders now, in ``on_fit_start``, as Lightning does itself
    when ``configure_optimizers`` asks for ``estimated_stepping_batches`` (the fit loop sets them up again
    only when they are missing or due for a reload)."""
    if trainer.train_dataloader is None:
        trainer.fit_loop.setup_data()
    if trainer.val_dataloaders is None:  # as the fit loop does when it starts (its `on_run_start`)
        trainer.validating = True
        try:
            trainer.fit_loop.epoch_loop.val_loop.setup_data()
        finally:
            trainer.training = True


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


__all__ = ["Converted", "EveryNth", "peek", "shard", "single_loader", "without_augmentation"]
