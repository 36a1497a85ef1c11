"""Reading checkpoint and weights files safely: tensors and plain values only, nothing executed."""

from __future__ import annotations

import os
import pickle
import zipfile
from typing import Any

import torch


def load_plain(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, memory-mapped where the format allows it (reading a
    checkpoint's keys then does not read its tensors)."""
    return torch.load(path, map_location="cpu", mmap=zipfile.is_zipfile(path), weights_only=True)


def refused_as_unsafe(err: BaseException) -> bool:
    """Whether ``err`` is ``weights_only`` refusing a readable file that holds more than tensors and plain values."""
    return isinstance(err, pickle.UnpicklingError) and ("weights_only" in str(err) or "Weights only" in str(err))


__all__ = ["load_plain", "refused_as_unsafe"]
