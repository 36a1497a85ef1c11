"""Data modules: digits (real, offline), CIFAR on fake files in the real format, class subsets, clear errors."""

import pytest
import torch

from pfa_lightning.experiments.datamodules import CIFARDataModule, DataError, DigitsDataModule, ImageFolderDataModule, SyntheticDataModule
from tests.helpers.fake_cifar import write_fake_cifar


@pytest.fixture(params=["cifar10", "cifar100"])
def fake_cifar(request, tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if request.param == "cifar10" else CIFAR100
    lists = write_fake_cifar(tmp_path, request.param)
    # torchvision checks each file's md5: point it at the fake files' checksums
    monkeypatch.setattr(cls, "train_list", lists["train_list"])
    monkeypatch.setattr(cls, "test_list", lists["test_list"])
    monkeypatch.setattr(cls, "meta", lists["meta"])
    return request.param, tmp_path


def test_cifar_loader_reads_the_real_format_with_class_subset(fake_cifar):
    name, root = fake_cifar
    dm = CIFARDataModule(name, data_dir=str(root), download=False, batch_size=8, val_fraction=0.1)
    dm.prepare_data()
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32
    train_files = 5 if name == "cifar10" else 1  # CIFAR-100 ships one training file
    assert len(dm.split("train")) + len(dm.split("val")) == 20 * train_files and len(dm.split("test")) == 20
    assert dm.num_classes == (10 if name == "cifar10" else 100)

    # validation and analysis read plain images; training ones are augmented (random crops and flips)
    assert torch.equal(dm.split("val")[0][0], dm.split("val")[0][0])
    assert torch.equal(next(iter(dm.analysis_dataloader()))[0], next(iter(dm.analysis_dataloader()))[0])

    subset = CIFARDataModule(name, data_dir=str(root), download=False, batch_size=64, classes=[1, 3])
    subset.setup()
    labels = torch.cat([y for _, y in subset.test_dataloader()])
    assert set(labels.tolist()) == {1, 3}

    special = CIFARDataModule(name, data_dir=str(root), download=False, specialize_classes=[2],
                              specialize_from_epoch=1)
    special.setup()
    assert len(special.split("test")) == 20  # not yet switched
    labels = torch.cat([y for _, y in special.analysis_dataloader()])
    assert set(labels.tolist()) == {2}


def test_missing_cifar_offline_gives_one_clear_message(tmp_path):
    dm = CIFARDataModule("cifar10", data_dir=str(tmp_path / "nowhere"), download=False)
    with pytest.raises(DataError, match=r"cifar10 was not found in .*cifar-10-batches-py.*python run.py dataset=digits"):
        dm.prepare_data()


def test_digits_split_is_real_and_seeded():
    dm = DigitsDataModule(batch_size=32, in_channels=1)
    dm.setup()
    sizes = [len(dm.split(s)) for s in ("train", "val", "test")]
    assert sum(sizes) == 1797 and sizes[2] == 359
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape[1:] == (1, 32, 32) and y.max() <= 9
    again = DigitsDataModule(batch_size=32, in_channels=1)
    again.setup()
    assert torch.equal(again.split("test").tensors[1], dm.split("test").tensors[1])


def test_bad_data_options(tmp_path):
    with pytest.raises(ValueError, match=r"`classes` must be a non-empty list of class indices in \[0, 10\), got \[12\]"):
        SyntheticDataModule(classes=[12]).setup()
    with pytest.raises(ValueError, match=r"set both or neither"):
        SyntheticDataModule(specialize_classes=[1])
    with pytest.raises(ValueError, match=r"`eval_batch_size` must be an integer >= 1 or None, got 0"):
        SyntheticDataModule(eval_batch_size=0)
    assert SyntheticDataModule(batch_size=32).eval_batch_size == 256
    with pytest.raises(DataError, match=r"needs .*train/<class>/\*.png"):
        ImageFolderDataModule(root=str(tmp_path)).setup()
    with pytest.raises(ValueError, match=r"`name` must be one of \('cifar10', 'cifar100'\), got 'cifar5'"):
        CIFARDataModule("cifar5")


def test_imagefolder(tmp_path):
    from PIL import Image

    for part in ("train", "test"):
        for c in ("cat", "dog"):
            (tmp_path / part / c).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (10, 12), (200, 0, 0) if c == "cat" else (0, 0, 200)).save(tmp_path / part / c / f"{i}.png")
    dm = ImageFolderDataModule(root=str(tmp_path), size=16, batch_size=4, val_fraction=0.2)
    dm.setup()
    assert dm.num_classes == 2
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape[1:] == (3, 16, 16)
    red = dm.split("test")[0][0]  # colour is kept: a red image is red
    assert red[0].mean() > 0.5 and red[2].mean() < -0.5
    grey = ImageFolderDataModule(root=str(tmp_path), size=16, in_channels=1)
    grey.setup()
    assert grey.split("test")[0][0].shape == (1, 16, 16)
