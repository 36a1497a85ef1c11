"""Compensation: fold the contribution of removed units into the kept ones, by least squares.

Where a layer's response reaches its consumers through linear reshapes only (no pooling,
addition or normalisation in between), each removed response is predicted from the kept ones,
``x_R ~ A x_K + b``, with ``A = C_RK C_KK^-1`` and ``b = mu_R - A mu_K`` from the per-position
statistics gathered with ``collect_responses(..., per_position=True)``. The consumer's weights
absorb it: ``W_K += W_R A`` per kernel position, and the constant ``W_R b`` goes into the
consumer's bias (or the running mean of the BatchNorm that follows it). For a removed unit that is
an exact linear combination of kept ones the network's output does not change (up to the border
of zero-padded convolutions for the constant part).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from pfa_lightning.graph import ModelGraph

log = logging.getLogger("pfa_lightning")
RIDGE = 1e-8  # relative Tikhonov term: keeps the solve stable when kept units are nearly collinear


def _least_squares(mean: np.ndarray, cov: np.ndarray, kept: list[int], removed: list[int]) -> tuple[np.ndarray, np.ndarray]:
    ckk = cov[np.ix_(kept, kept)]
    crk = cov[np.ix_(removed, kept)]
    ridge = RIDGE * max(float(np.trace(ckk)) / len(kept), 1e-300)
    a = np.linalg.solve(ckk + ridge * np.eye(len(kept)), crk.T).T  # (removed, kept)
    b = mean[removed] - a @ mean[kept]
    return a, b


def _fold(consumer: nn.Module, width: int, kept: list[int], removed: list[int], a: np.ndarray, b: np.ndarray,
          norm: nn.Module | None) -> str:
    weight = consumer.weight.detach()
    if isinstance(consumer, nn.Linear):
        if consumer.in_features % width:
            return "consumer reads more features than this layer gives"
        w = weight.reshape(weight.shape[0], width, -1)  # flatten of (C, H, W) is channel-major
    else:
        if consumer.in_channels != width:
            return "consumer reads more channels than this layer gives"
        w = weight
    w64 = w.double()
    a_t = torch.as_tensor(a, dtype=torch.float64, device=w.device)
    b_t = torch.as_tensor(b, dtype=torch.float64, device=w.device)
    new = w64.clone()
    new[:, kept] += torch.einsum("or...,rk->ok...", w64[:, removed], a_t)
    shift = torch.einsum("or...,r->o", w64[:, removed], b_t)
    consumer.weight.data = new.to(weight.dtype).reshape(weight.shape)
    if consumer.bias is not None:
        consumer.bias.data = consumer.bias.detach() + shift.to(consumer.bias.dtype)
        return ""
    if norm is not None and getattr(norm, "running_mean", None) is not None:
        norm.running_mean.data = norm.running_mean - shift.to(norm.running_mean.dtype)
        return ""
    return "constant part dropped (consumer has no bias)"


def compensate(model: nn.Module, recipe: Any, graph: ModelGraph, stats: Any) -> dict[str, str]:
    """Adjust consumers' weights for every removed unit that can be compensated; returns a note per
    layer (empty string: compensated). Call before the surgery, on the model the recipe was made for."""
    notes: dict[str, str] = {}
    for layer in recipe.layers:
        removed = layer.removed_indices
        if not removed:
            continue
        spaces = graph.spaces_of(layer.name)
        if len(spaces) != 1 or spaces[0].coupled:
            notes[layer.name] = "coupled channels: not compensated"
            continue
        s = stats.layers.get(layer.name) if stats is not None else None
        if s is None or s.positions is None:
            notes[layer.name] = "no per-position statistics (collect_responses(..., per_position=True))"
            continue
        consumers = graph.linear_consumers(layer.name)
        if not consumers:
            notes[layer.name] = "non-linear path to the consumers: not compensated"
            continue
        mean, cov = s.positions.mean_and_covariance()
        a, b = _least_squares(mean, cov, layer.kept_indices, removed)
        problems = [_fold(model.get_submodule(c), layer.original, layer.kept_indices, removed, a, b,
                          graph.following_norm(c)) for c in consumers]
        notes[layer.name] = "; ".join(p for p in problems if p)
    done = sorted(name for name, note in notes.items() if not note)
    log.info("PFA compensation: %d layer(s) compensated (%s)", len(done), ", ".join(done) or "none")
    return notes
