"""A model's state around surgery: eval mode for a block, and an exact snapshot to undo a failed cut."""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterable, Iterator

from torch import nn


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block and give every submodule its own train/eval flag back."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag


class ModelState:
    """Everything surgery may replace in a model, so that a failed surgery can be undone exactly."""

    def __init__(self, model: nn.Module, extra: Iterable[nn.Module] = ()) -> None:
        extra = list(extra)
        modules = [*model.modules(), *extra]  # extra: e.g. Torch-Pruning's operation nodes, which a cut updates too
        self._saved = [
            (m, dict(m.__dict__), dict(m._parameters), dict(m._buffers), m.training, type(m)) for m in modules
        ]
        self._data = [(t, t.data) for m in modules for t in (*m._parameters.values(), *m._buffers.values())
                      if t is not None]
        # Torch-Pruning's concat/split nodes update their size lists in place: keep copies of their lists
        self._lists = [(m, {k: copy.deepcopy(v) for k, v in m.__dict__.items() if isinstance(v, list)}) for m in extra]

    def restore(self) -> None:
        for module, attrs, params, buffers, training, cls in self._saved:
            if type(module) is not cls:
                module.__class__ = cls  # a head cut changed it (heads.PrunedMultiheadAttention)
            module.__dict__.clear()
            module.__dict__.update(attrs)
            module.__dict__["_parameters"] = params
            module.__dict__["_buffers"] = buffers
            module.training = training
        for tensor, data in self._data:
            tensor.data = data
        for module, lists in self._lists:
            module.__dict__.update(copy.deepcopy(lists))

    def restore_training_flags(self) -> None:
        for module, _, _, _, training, _ in self._saved:
            module.training = training


__all__ = ["ModelState", "evaluating"]
