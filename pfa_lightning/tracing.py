"""One trace per compression: analysis, decision and surgery of an unchanged model share its graph."""

from __future__ import annotations

import contextvars
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn

from pfa_lightning.graph import ModelGraph
from pfa_lightning.layers import layer_types
from pfa_lightning.nested import map_nested

_SCOPE: contextvars.ContextVar[dict[int, tuple[tuple, ModelGraph]] | None] = contextvars.ContextVar(
    "pfa_one_trace", default=None)


@contextmanager
def one_trace() -> Iterator[None]:
    """Within the block, analysis, decision and surgery of the same unchanged model share one trace
    (``collect_responses``, ``make_recipe`` and ``apply_recipe`` ask :func:`traced`): the graph is
    traced again only after a surgery, or when the model's modules, parameter shapes, the inputs'
    shapes (batch size aside) or autocast changed. ``PFACallback`` runs each compression in one."""
    token = _SCOPE.set({})
    try:
        yield
    finally:
        _SCOPE.reset(token)


def fingerprint(model: nn.Module, example_inputs: Any) -> tuple:
    """What a trace depends on: module names, types and parameter shapes/dtypes/devices, the inputs' shapes (batch
    size aside) and dtypes, autocast, and the registered layer kinds."""
    modules = tuple((name, type(m), tuple((k, tuple(p.shape), p.dtype, p.device) for k, p in m._parameters.items()
                                          if p is not None)) for name, m in model.named_modules())
    shapes: list[Any] = []
    map_nested(example_inputs, lambda t: shapes.append((tuple(t.shape[1:]), t.dtype)), other=lambda _: None)
    return modules, tuple(shapes), torch.is_autocast_enabled(), layer_types()


def traced(model: nn.Module, example_inputs: Any) -> ModelGraph:
    """``model``'s graph: within :func:`one_trace`, the one already traced if nothing changed since; else a new one."""
    cache = _SCOPE.get()
    if cache is None:
        return ModelGraph(model, example_inputs)
    key = fingerprint(model, example_inputs)
    hit = cache.get(id(model))
    if hit is not None and hit[0] == key and hit[1].model is model and not hit[1]._used:
        return hit[1]
    graph = ModelGraph(model, example_inputs)
    cache[id(model)] = (key, graph)
    return graph


__all__ = ["fingerprint", "one_trace", "traced"]
