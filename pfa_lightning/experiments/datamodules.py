"""Data for the experiments, as Lightning DataModules.

- ``digits``: scikit-learn's 1,797 handwritten 8x8 digits (real data shipped with the package,
  works offline), upsampled to 32x32 for the CIFAR-style models;
- ``fashion_mnist``: Zalando's 70,000 28x28 grey clothing images (the benchmark data), read from the four
  IDX files (Debian's ``dataset-fashion-mnist`` package, or torchvision's layout under ``data_dir``),
  resized to 32x32 for the CIFAR-style models;
- ``cifar10`` / ``cifar100``: torchvision's loaders, downloaded into ``data_dir`` when online;
- ``imagefolder``: a user's own ``root/{train,test}/<class>/*.png`` folders;
- ``synthetic``: random class-dependent images, for tests.

Every data module can restrict itself to a class subset (``classes``), or switch to one from a
given epoch on (``specialize_classes`` + ``specialize_from_epoch``): train on all classes, then
analyse and fine-tune on a few (PFA's domain specialisation; set ``reload_dataloaders_every_n_epochs=1``
on the Trainer).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any, Sequence

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from pfa_lightning.errors import PFAError
from pfa_lightning.experiments.datasets import TransformedTensors, class_subset, digits_splits, seeded_subset
from pfa_lightning.validation import check_choice, check_int, fail

CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


class DataError(PFAError):
    """A data set that cannot be found or read; the message says where the files go."""


class ImageDataModule(pl.LightningDataModule):
    """Shared logic: train/val split, class subsets, domain specialisation, loaders.

    Subclasses implement :meth:`load` returning ``(train_and_val, val_or_None, test)`` data sets
    and set ``num_classes`` / ``in_channels``.
    """

    num_classes: int = 10
    in_channels: int = 3
    name: str = "images"

    def __init__(self, batch_size: int = 128, num_workers: int = 0, val_fraction: float = 0.1, seed: int = 0,
                 classes: Sequence[int] | None = None, specialize_classes: Sequence[int] | None = None,
                 specialize_from_epoch: int | None = None, eval_batch_size: int | None = None) -> None:
        super().__init__()
        if not isinstance(batch_size, int) or batch_size < 1:
            raise fail("batch_size", "a positive integer", batch_size)
        if (specialize_classes is None) != (specialize_from_epoch is None):
            raise PFAError("`specialize_classes` and `specialize_from_epoch` go together: set both or neither.")
        self.batch_size, self.num_workers, self.val_fraction, self.seed = batch_size, num_workers, val_fraction, seed
        self.eval_batch_size = check_int("eval_batch_size", eval_batch_size, 1, optional=True) or max(batch_size, 256)
        self.classes = list(classes) if classes is not None else None
        self.specialize_classes = list(specialize_classes) if specialize_classes is not None else None
        self.specialize_from_epoch = specialize_from_epoch
        self._splits: tuple[Dataset, Dataset, Dataset] | None = None

    def load(self) -> tuple[Dataset, Dataset | None, Dataset]:
        raise NotImplementedError

    def _check_classes(self, classes: Sequence[int] | None, what: str) -> None:
        if classes is None:
            return
        bad = [c for c in classes if not isinstance(c, int) or not 0 <= c < self.num_classes]
        if bad or not classes:
            raise fail(what, f"a non-empty list of class indices in [0, {self.num_classes})", list(classes))

    def load_plain_train(self) -> Dataset | None:
        """The training images without augmentation (for validation and PFA's analysis), if they differ."""
        return None

    def setup(self, stage: str | None = None) -> None:
        if self._splits is not None:
            return
        train, val, test = self.load()
        self._check_classes(self.classes, "classes")
        self._check_classes(self.specialize_classes, "specialize_classes")
        plain = self.load_plain_train() or train
        self._analysis = plain
        if val is None:
            n_val = int(len(train) * self.val_fraction)
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(self.seed)).tolist()
            val, train = Subset(plain, order[:n_val]), Subset(train, order[n_val:])
            self._analysis = Subset(plain, order[n_val:])
        self._splits = tuple(class_subset(d, self.classes) for d in (train, val, test))  # type: ignore[assignment]
        self._analysis = class_subset(self._analysis, self.classes)

    @property
    def specialized(self) -> bool:
        """True once the data module has switched to ``specialize_classes``."""
        trainer = getattr(self, "trainer", None)
        return (self.specialize_from_epoch is not None and trainer is not None
                and trainer.current_epoch >= self.specialize_from_epoch)

    def split(self, name: str, specialized: bool | None = None) -> Dataset:
        """``"train"``, ``"val"`` or ``"test"``, restricted to the specialisation classes when active."""
        self.setup()
        assert self._splits is not None
        ds = dict(zip(("train", "val", "test"), self._splits))[name]
        active = self.specialized if specialized is None else specialized
        return class_subset(ds, self.specialize_classes) if active and self.specialize_classes else ds

    def _loader(self, ds: Dataset, shuffle: bool, batch_size: int) -> DataLoader:
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, drop_last=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.split("train"), True, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.split("val"), False, self.eval_batch_size)

    def test_dataloader(self, specialized: bool | None = None) -> DataLoader:
        """The test split; ``specialized=True`` gives the target classes' test samples whatever the epoch."""
        return self._loader(self.split("test", specialized), False, self.eval_batch_size)

    def analysis_dataloader(self) -> DataLoader:
        """Data for PFA's analysis: the training samples without augmentation (the target classes
        only when specialising)."""
        self.setup()
        ds = class_subset(self._analysis, self.specialize_classes) if self.specialize_classes else self._analysis
        return self._loader(ds, False, self.eval_batch_size)


class DigitsDataModule(ImageDataModule):
    """scikit-learn's handwritten digits (real, offline), upsampled to ``size`` x ``size``."""

    name = "digits"

    def __init__(self, size: int = 32, in_channels: int = 3, test_fraction: float = 0.2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.size, self.in_channels = check_int("size", size, 8), check_int("in_channels", in_channels, 1)
        self.test_fraction = test_fraction
        self.num_classes = 10

    def load(self):
        return digits_splits(self.size, self.in_channels, self.val_fraction, self.test_fraction, self.seed)


FASHION_MNIST_DEBIAN = "/usr/share/datasets/fashion-mnist"  # where `apt-get install dataset-fashion-mnist` puts it
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530  # of the 60,000 training images scaled to [0, 1]
_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def read_idx(path: Path) -> torch.Tensor:
    """An IDX file (MNIST's format: big-endian header, unsigned bytes), gzip-compressed or not, as a uint8 tensor.

    Raises:
        DataError: the file is not an IDX file of unsigned bytes, or is truncated.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise DataError(f"Cannot read {path}: {err}.") from None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08 or not 1 <= data[3] <= 3:
        raise DataError(f"{path} is not an IDX file of unsigned bytes (MNIST's format): it starts with {data[:4]!r}.")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(data[3])]
    offset, size = 4 + 4 * len(dims), 1
    for d in dims:
        size *= d
    if len(data) - offset != size:
        raise DataError(f"{path} is truncated or padded: its header says {dims} ({size} bytes), "
                        f"it holds {len(data) - offset}.")
    return torch.frombuffer(bytearray(data[offset:]), dtype=torch.uint8).view(*dims)


class FashionMNISTDataModule(ImageDataModule):
    """Fashion-MNIST (Zalando): 60,000 training and 10,000 test 28x28 grey images of 10 kinds of clothing.

    Read from the four original IDX files (``train-images-idx3-ubyte`` etc., gzip-compressed or not):
    in ``root`` when given; otherwise torchvision's layout ``<data_dir>/FashionMNIST/raw``, then
    Debian's ``/usr/share/datasets/fashion-mnist`` (``apt-get install dataset-fashion-mnist``). With
    ``download=True`` and none found, torchvision downloads them into ``data_dir`` (needs internet).
    Images are bilinearly resized to ``size`` (32: the CIFAR-style models' input), standardised and
    repeated to ``in_channels``; training images are augmented (random crop with 2-pixel padding and
    horizontal flip) when ``augment``. ``train_size`` keeps a fixed, seeded subset of the training images
    (stratified: the same number per class), e.g. for a benchmark sized to a small machine.
    """

    name = "fashion_mnist"
    num_classes = 10

    def __init__(self, root: str | None = None, data_dir: str = "data", download: bool = False, size: int = 32,
                 in_channels: int = 1, augment: bool = True, train_size: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.root = Path(os.path.expanduser(str(root))) if root is not None else None
        self.data_dir, self.download, self.augment = os.path.expanduser(str(data_dir)), download, augment
        self.size = check_int("size", size, 8)
        self.in_channels = check_int("in_channels", in_channels, 1)
        self.train_size = check_int("train_size", train_size, self.num_classes, optional=True)

    def candidates(self) -> list[Path]:
        """The folders searched for the IDX files, in order."""
        if self.root is not None:
            return [self.root]
        return [Path(self.data_dir) / "FashionMNIST" / "raw", Path(FASHION_MNIST_DEBIAN)]

    @staticmethod
    def _files_in(folder: Path) -> dict[str, Path] | None:
        found = {}
        for stem in (name for pair in _IDX_FILES.values() for name in pair):
            path = next((folder / (stem + ext) for ext in ("", ".gz") if (folder / (stem + ext)).is_file()), None)
            if path is None:
                return None
            found[stem] = path
        return found

    def _locate(self) -> dict[str, Path]:
        for folder in self.candidates():
            files = self._files_in(folder)
            if files:
                return files
        looked = " and ".join(str(f.resolve()) for f in self.candidates())
        advice = (f"Fashion-MNIST was not found: looked for its four IDX files (train-images-idx3-ubyte[.gz], ...) "
                  f"in {looked}. Install Debian's package (apt-get install dataset-fashion-mnist, into "
                  f"{FASHION_MNIST_DEBIAN}), let torchvision download it on a machine with internet "
                  "(dataset.download=true, into dataset.data_dir), set dataset.root to the folder holding the "
                  "files, or run on the bundled digits instead (dataset=digits, with run.py or the pfa command)")
        if not self.download or self.root is not None:
            raise DataError(advice + ("" if self.root is not None else " (downloading is off: dataset.download=false)."))
        try:
            from torchvision.datasets import FashionMNIST

            FashionMNIST(self.data_dir, train=True, download=True)
        except Exception as err:  # offline: URLError, timeouts, ...
            raise DataError(f"{advice}. Downloading it failed ({type(err).__name__}: {err}).") from None
        files = self._files_in(Path(self.data_dir) / "FashionMNIST" / "raw")
        if not files:
            raise DataError(advice + " (torchvision's download left no IDX files).")
        return files

    def prepare_data(self) -> None:
        self._locate()

    def _images(self, part: str, files: dict[str, Path], size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``part``'s images (resized, standardised, repeated to ``in_channels``) and labels; with ``size``, a
        seeded class-balanced subset of that many, taken before any image is converted."""
        images, labels = (read_idx(files[stem]) for stem in _IDX_FILES[part])
        if images.dim() != 3 or labels.dim() != 1 or len(images) != len(labels) or int(labels.max()) >= 10:
            raise DataError(f"Fashion-MNIST's {part} files do not match: images {tuple(images.shape)}, labels "
                            f"{tuple(labels.shape)} (expected N x H x W images, N labels in [0, 10)).")
        if size is not None and size < len(labels):
            keep = seeded_subset(labels, size, self.seed)
            images, labels = images[keep], labels[keep]
        x = images.unsqueeze(1).float() / 255.0
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        x = ((x - FASHION_MNIST_MEAN) / FASHION_MNIST_STD).repeat(1, self.in_channels, 1, 1)
        return x, labels.long()

    def load(self):
        files = self._locate()
        x, y = self._images("train", files, self.train_size)
        self._plain = TransformedTensors(x, y)
        return TransformedTensors(x, y, augment=self.augment), None, TransformedTensors(*self._images("test", files))

    def load_plain_train(self):
        return self._plain if self.augment else None


class CIFARDataModule(ImageDataModule):
    """CIFAR-10 / CIFAR-100 through torchvision, stored in (and downloaded into) ``data_dir``."""

    def __init__(self, name: str = "cifar10", data_dir: str = "data", download: bool = True,
                 augment: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_choice("name", name, CIFAR_STATS)
        self.name, self.data_dir, self.download, self.augment = name, os.path.expanduser(str(data_dir)), download, augment
        self.num_classes, self.in_channels = (10 if name == "cifar10" else 100), 3

    def _dataset_class(self):
        from torchvision import datasets

        return datasets.CIFAR10 if self.name == "cifar10" else datasets.CIFAR100

    def prepare_data(self) -> None:
        self._open(train=True)
        self._open(train=False)

    def _open(self, train: bool, transform: Any = None):
        cls = self._dataset_class()
        try:
            return cls(self.data_dir, train=train, transform=transform, download=False)
        except RuntimeError:
            pass  # not there (or corrupted): try downloading below
        where = Path(self.data_dir).resolve() / cls.base_folder
        advice = (f"{self.name} was not found in {where}. Put the extracted '{cls.base_folder}' folder (or "
                  f"'{cls.filename}') into {Path(self.data_dir).resolve()}, set dataset.data_dir to where it is, or "
                  "run on the bundled digits instead (dataset=digits, with run.py or the pfa command)")
        if not self.download:
            raise DataError(advice + " (downloading is off: dataset.download=false).")
        try:
            return cls(self.data_dir, train=train, transform=transform, download=True)
        except Exception as err:  # offline: URLError, timeouts, ...
            raise DataError(f"{advice}. Downloading it failed ({type(err).__name__}: {err}).") from None

    def _transforms(self, augment: bool):
        from torchvision import transforms as T

        mean, std = CIFAR_STATS[self.name]
        plain = [T.ToTensor(), T.Normalize(mean, std)]
        return T.Compose(([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if augment else []) + plain)

    def load(self):
        return self._open(True, self._transforms(self.augment)), None, self._open(False, self._transforms(False))

    def load_plain_train(self):
        return self._open(True, self._transforms(False)) if self.augment else None


class ImageFolderDataModule(ImageDataModule):
    """A user's own images: ``root/train/<class>/*`` and ``root/test/<class>/*`` (``root/val`` optional)."""

    name = "imagefolder"

    def __init__(self, root: str = "data/images", size: int = 32, num_classes: int | None = None,
                 in_channels: int = 3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.root, self.size = Path(os.path.expanduser(str(root))), check_int("size", size, 8)
        self.in_channels = in_channels
        if num_classes is not None:
            self.num_classes = num_classes
        else:
            train = self.root / "train"
            self.num_classes = len([d for d in train.iterdir() if d.is_dir()]) if train.is_dir() else 0

    def load(self):
        from torchvision import datasets
        from torchvision import transforms as T

        for part in ("train", "test"):
            if not (self.root / part).is_dir():
                raise DataError(f"Image folder {self.root / part} does not exist: an imagefolder data set needs "
                                f"{self.root}/train/<class>/*.png and {self.root}/test/<class>/*.png "
                                "(set dataset.root).")
        if self.in_channels not in (1, 3):
            raise fail("in_channels", "1 (grey) or 3 (RGB) for an imagefolder data set", self.in_channels)
        grey = [T.Grayscale(1)] if self.in_channels == 1 else []
        tf = T.Compose(grey + [T.Resize((self.size, self.size)), T.ToTensor(), T.Normalize([0.5] * self.in_channels, [0.5] * self.in_channels)])
        val = datasets.ImageFolder(str(self.root / "val"), tf) if (self.root / "val").is_dir() else None
        return datasets.ImageFolder(str(self.root / "train"), tf), val, datasets.ImageFolder(str(self.root / "test"), tf)


class SyntheticDataModule(ImageDataModule):
    """Random images whose mean depends on the class: learnable, tiny, for tests and smoke runs."""

    name = "synthetic"

    def __init__(self, num_samples: int = 256, size: int = 32, num_classes: int = 10, in_channels: int = 3,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_samples, self.size = check_int("num_samples", num_samples, 1), check_int("size", size, 8)
        self.num_classes, self.in_channels = check_int("num_classes", num_classes, 2), check_int("in_channels", in_channels, 1)

    def load(self):
        g = torch.Generator().manual_seed(self.seed)

        def make(n: int) -> TensorDataset:
            y = torch.randint(0, self.num_classes, (n,), generator=g)
            pattern = torch.randn(self.num_classes, self.in_channels, self.size, self.size, generator=torch.Generator().manual_seed(1234))
            x = 0.8 * pattern[y] + torch.randn(n, self.in_channels, self.size, self.size, generator=g)
            return TensorDataset(x, y)

        return make(self.num_samples), None, make(max(self.num_samples // 4, self.num_classes))
