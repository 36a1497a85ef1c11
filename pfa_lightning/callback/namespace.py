"""Both Lightning namespaces: ``pytorch_lightning`` and ``lightning.pytorch`` (``import lightning as L``).

They are two copies of the same code whose classes are distinct: a ``lightning.pytorch`` strategy is
not an instance of ``pytorch_lightning``'s strategy classes. The callback works with whichever package
the user's trainer or module comes from: :func:`lightning_of` finds it from the object itself.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

NAMESPACES = ("pytorch_lightning", "lightning.pytorch")


def lightning_of(obj: Any) -> ModuleType:
    """The Lightning package ``obj`` (a trainer, LightningModule, strategy, or one of their classes) is
    built on; ``pytorch_lightning`` when it is neither's."""
    cls = obj if isinstance(obj, type) else type(obj)
    for klass in cls.__mro__:
        module = klass.__module__ or ""
        if module == "lightning.pytorch" or module.startswith("lightning.pytorch."):
            return importlib.import_module("lightning.pytorch")
        if module == "pytorch_lightning" or module.startswith("pytorch_lightning."):
            return importlib.import_module("pytorch_lightning")
    return importlib.import_module("pytorch_lightning")


def lightning_module_classes() -> tuple[type, ...]:
    """``LightningModule`` of each installed namespace."""
    classes = []
    for name in NAMESPACES:
        try:
            classes.append(importlib.import_module(name).LightningModule)
        except ImportError:
            continue
    return tuple(classes)


__all__ = ["NAMESPACES", "lightning_module_classes", "lightning_of"]
