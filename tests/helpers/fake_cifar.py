"""Tiny CIFAR-10/100 files in torchvision's real on-disk format (pickled batches + meta)."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_fake_cifar(root: Path, name: str = "cifar10", per_file: int = 20, seed: int = 0) -> dict[str, list]:
    """Write fake files under ``root`` and return the (file, md5) lists torchvision checks them against."""
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if name == "cifar10" else CIFAR100
    folder = root / cls.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    classes = 10 if name == "cifar10" else 100
    label_key = "labels" if name == "cifar10" else "fine_labels"
    lists = {}
    for attr in ("train_list", "test_list"):
        entries = []
        for file_name, _ in getattr(cls, attr):
            labels = (np.arange(per_file) % classes).tolist()
            batch = {"data": rng.integers(0, 256, (per_file, 3072), dtype=np.uint8), label_key: labels,
                     "batch_label": file_name}
            if name == "cifar100":
                batch["coarse_labels"] = [l // 5 for l in labels]
            path = folder / file_name
            path.write_bytes(pickle.dumps(batch))
            entries.append([file_name, _md5(path)])
        lists[attr] = entries
    meta_key = cls.meta["key"]
    meta = {meta_key: [f"class{i}" for i in range(classes)]}
    (folder / cls.meta["filename"]).write_bytes(pickle.dumps(meta))
    lists["meta"] = {**cls.meta, "md5": _md5(folder / cls.meta["filename"])}
    return lists
