"""Plain PyTorch data sets for the experiments and examples (no Lightning): the bundled digits, class subsets."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset, TensorDataset

from pfa_lightning.errors import PFAError

DIGITS_MEAN, DIGITS_STD = 0.3051, 0.3825  # of the 8x8 digits scaled to [0, 1]


def digits_splits(size: int = 32, channels: int = 1, val_fraction: float = 0.1, test_fraction: float = 0.2,
                  seed: int = 0) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    """Train / validation / test splits of the 1,797 8x8 digits, upsampled to ``size`` x ``size``.

    Images are scaled to [0, 1], bilinearly upsampled, standardised, and repeated to ``channels``
    channels (3 for models built with ``in_channels=3``). The split is seeded: the same everywhere.
    """
    from sklearn.datasets import load_digits

    if not 0 < val_fraction < 1 or not 0 < test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise PFAError(f"`val_fraction` and `test_fraction` must be in (0, 1) with a sum < 1, "
                         f"got {val_fraction} and {test_fraction}.")
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = ((x - DIGITS_MEAN) / DIGITS_STD).repeat(1, channels, 1, 1)
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test, n_val = int(len(y) * test_fraction), int(len(y) * val_fraction)
    test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    return TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val]), TensorDataset(x[test], y[test])


class TransformedTensors(Dataset):
    """Images and labels held as tensors, with an optional augmentation: a random crop of the image
    padded by ``padding`` pixels (zeros, i.e. the mean after standardising: edges) and a horizontal flip,
    drawn per sample from torch's global generator (seeded by ``seed_everything`` / DataLoader workers)."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, augment: bool = False, padding: int = 2) -> None:
        self.images, self.targets, self.augment, self.padding = images, targets, augment, padding

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[index]
        if self.augment:
            p = self.padding
            dy, dx = torch.randint(0, 2 * p + 1, (2,)).tolist()
            x = F.pad(x, (p, p, p, p))[:, dy: dy + x.shape[-2], dx: dx + x.shape[-1]]
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
        return x, self.targets[index]


def seeded_subset(labels: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """Indices (ascending) of a seeded subset of ``size`` samples with as equal a count per class as the
    labels allow (stratified), so a small training subset keeps the class balance."""
    g = torch.Generator().manual_seed(seed)
    classes = labels.unique()
    per_class = [torch.nonzero(labels == c).flatten() for c in classes]
    per_class = [idx[torch.randperm(len(idx), generator=g)] for idx in per_class]
    share, rest = divmod(size, len(classes))
    take = [min(len(idx), share + (i < rest)) for i, idx in enumerate(per_class)]
    chosen = torch.cat([idx[:n] for idx, n in zip(per_class, take)])
    short = size - len(chosen)
    if short > 0:  # some class had too few samples: fill from the others' leftovers
        left = torch.cat([idx[n:] for idx, n in zip(per_class, take)])
        chosen = torch.cat([chosen, left[torch.randperm(len(left), generator=g)[:short]]])
    return chosen.sort().values


def targets_of(dataset: Dataset) -> list[int]:
    """Class labels of a data set without loading its images."""
    if isinstance(dataset, Subset):
        parent = targets_of(dataset.dataset)
        return [parent[i] for i in dataset.indices]
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1].tolist()
    if isinstance(dataset, TransformedTensors):
        return dataset.targets.tolist()
    if hasattr(dataset, "targets"):
        return [int(t) for t in dataset.targets]
    raise PFAError(f"Cannot read the labels of a {type(dataset).__name__}: class subsets need a TensorDataset, a Subset or a data set with `targets`.")


def class_subset(dataset: Dataset, classes: Sequence[int] | None) -> Dataset:
    """The samples of ``dataset`` whose label is in ``classes`` (labels keep their numbering)."""
    if classes is None:
        return dataset
    wanted = set(int(c) for c in classes)
    return Subset(dataset, [i for i, t in enumerate(targets_of(dataset)) if t in wanted])


__all__ = ["DIGITS_MEAN", "DIGITS_STD", "TransformedTensors", "class_subset", "digits_splits", "seeded_subset",
           "targets_of"]
