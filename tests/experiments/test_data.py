"""Data modules: digits (real, offline), CIFAR and Fashion-MNIST on fake files in the real format, class subsets, clear errors."""

import pytest
import torch

from pfa_lightning.errors import PFAError
from pfa_lightning.experiments.datamodules import (CIFARDataModule, DataError, DigitsDataModule, FashionMNISTDataModule,
                                                   ImageFolderDataModule, SyntheticDataModule, read_idx)
from tests.helpers.fake_cifar import write_fake_cifar
from tests.helpers.fake_idx import idx_bytes, write_fake_fashion_mnist


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
    with pytest.raises(DataError, match=r"cifar10 was not found in .*cifar-10-batches-py.*\(dataset=digits, with run.py or the pfa command\)"):
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


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_reads_the_idx_files(tmp_path, gz):
    root = write_fake_fashion_mnist(tmp_path / "fm", n_train=60, n_test=20, gz=gz)
    dm = FashionMNISTDataModule(root=str(root), batch_size=8, val_fraction=0.1)
    dm.prepare_data()
    dm.setup()
    assert [len(dm.split(s)) for s in ("train", "val", "test")] == [54, 6, 20]
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 1, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.long
    assert dm.num_classes == 10 and dm.in_channels == 1
    labels = torch.cat([y for _, y in dm.test_dataloader()])
    assert labels.tolist() == [i % 10 for i in range(20)]
    # the images are the files' bytes: resized to 32x32 and standardised, brighter with the label
    raw = read_idx(next(root.glob("t10k-images*")))
    assert raw.shape == (20, 28, 28) and raw.dtype == torch.uint8
    test_x = torch.cat([x for x, _ in dm.test_dataloader()])
    assert test_x[9].mean() > test_x[0].mean()
    # training images are augmented (crops, flips); validation and analysis images are not
    assert torch.equal(dm.split("val")[0][0], dm.split("val")[0][0])
    assert torch.equal(next(iter(dm.analysis_dataloader()))[0], next(iter(dm.analysis_dataloader()))[0])
    torch.manual_seed(0)
    draws = [dm.split("train")[0][0] for _ in range(8)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])


def test_fashion_mnist_options_subset_channels_and_size(tmp_path):
    root = write_fake_fashion_mnist(tmp_path / "fm", n_train=100, n_test=20)
    dm = FashionMNISTDataModule(root=str(root), train_size=30, in_channels=3, size=28, augment=False, val_fraction=0.2,
                                seed=1)
    dm.setup()
    train_val = [int(y) for ds in (dm.split("train"), dm.split("val")) for _, y in ds]
    assert len(train_val) == 30 and sorted(train_val) == sorted(list(range(10)) * 3)  # the same count per class
    assert dm.split("test")[0][0].shape == (3, 28, 28)
    again = FashionMNISTDataModule(root=str(root), train_size=30, size=28, augment=False, val_fraction=0.2, seed=1)
    again.setup()  # the same subset and split; the grey channel repeated
    assert torch.equal(torch.stack([x[:1] for x, _ in dm.split("train")]), torch.stack([x for x, _ in again.split("train")]))
    assert torch.equal(dm.split("train")[0][0][0], dm.split("train")[0][0][2])
    with pytest.raises(PFAError, match="`train_size` must be an integer >= 10"):
        FashionMNISTDataModule(root=str(root), train_size=3)


def test_fashion_mnist_finds_torchvisions_layout_under_data_dir(tmp_path):
    write_fake_fashion_mnist(tmp_path / "FashionMNIST" / "raw", gz=False)
    dm = FashionMNISTDataModule(data_dir=str(tmp_path))
    assert dm.candidates()[0] == tmp_path / "FashionMNIST" / "raw"
    dm.setup()
    assert len(dm.split("test")) == 20


def test_missing_fashion_mnist_gives_one_clear_message(tmp_path, monkeypatch):
    from pfa_lightning.experiments import datamodules

    monkeypatch.setattr(datamodules, "FASHION_MNIST_DEBIAN", str(tmp_path / "debian"))
    dm = FashionMNISTDataModule(data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(DataError) as err:
        dm.prepare_data()
    message = str(err.value)
    assert "Fashion-MNIST was not found" in message and str(tmp_path / "nowhere") in message
    assert "apt-get install dataset-fashion-mnist" in message and "dataset.download=true" in message
    assert "(dataset=digits, with run.py or the pfa command)" in message and "\n" not in message
    with pytest.raises(DataError, match=r"not found: looked .* in .*elsewhere"):
        FashionMNISTDataModule(root=str(tmp_path / "elsewhere")).setup()


def test_a_corrupt_idx_file_is_one_clear_error(tmp_path):
    root = write_fake_fashion_mnist(tmp_path / "fm", gz=False)
    (root / "t10k-labels-idx1-ubyte").write_bytes(b"not an idx file")
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte is not an IDX file"):
        FashionMNISTDataModule(root=str(root)).setup()
    (root / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(torch.arange(25).numpy() % 10)[:-3])
    with pytest.raises(DataError, match=r"truncated"):
        FashionMNISTDataModule(root=str(root)).setup()
    (root / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(torch.arange(7).numpy() % 10))
    with pytest.raises(DataError, match=r"test files do not match: images \(20, 28, 28\), labels \(7,\)"):
        FashionMNISTDataModule(root=str(root)).setup()
