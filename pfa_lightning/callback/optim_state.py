"""Optimizer state across a surgery: which entries of every parameter survive, and moving state over.

Surgery replaces the Parameter objects of every layer it shrinks, so an optimizer built before it
holds stale tensors. The callback rebuilds the optimizers, then :func:`carry_over` gives them the
hyperparameters (the schedule's progress), the LR schedulers' state and, if asked, the
per-parameter state (SGD momentum, Adam moments) sliced to the kept units.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping, Optional

import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor, nn

from pfa_lightning.errors import PFAError
from pfa_lightning.nested import map_nested
from pfa_lightning.recipe import Recipe
from pfa_lightning.surgery import apply_recipe

KeptIndices = tuple[Optional[Tensor], Optional[Tensor]]  # surviving indices along dims 0 and 1 (None: all)
_MAX_EXACT = 2**24  # float32 represents every integer below this exactly


def _index_code(shape: torch.Size, dim: int) -> Tensor:
    """A float32 tensor of ``shape`` holding, at every position, its index along ``dim``."""
    view = [-1 if d == dim else 1 for d in range(len(shape))]
    return torch.arange(shape[dim], dtype=torch.float32).view(view).expand(shape)


def _read_code(code: Tensor, dim: int) -> Tensor:
    return code.detach().movedim(dim, 0).reshape(code.shape[dim], -1)[:, 0].round().long().cpu()


def kept_parameter_indices(model: nn.Module, recipe: Recipe, example_inputs: Any) -> dict[str, KeptIndices]:
    """For every parameter that ``recipe`` shrinks, the indices it keeps along dims 0 and 1.

    The recipe is applied to two throwaway float32 copies of ``model`` whose parameters hold their
    own index along dim 0 (then dim 1); the surviving values are the kept indices. This is exact
    for everything the surgery touches (BatchNorm, consumers' input channels, flatten -> Linear)
    without knowing how Torch-Pruning slices each layer. ``model`` is not modified.
    """
    shapes = {name: p.shape for name, p in model.named_parameters()}
    too_big = [n for n, s in shapes.items() if any(d >= _MAX_EXACT for d in s[:2])]
    if too_big:
        raise PFAError(f"Cannot track optimizer state for {too_big[0]!r}: a dimension is >= 2**24.")
    kept: dict[str, list[Optional[Tensor]]] = {name: [None, None] for name in shapes}
    for dim in (0, 1):
        probe = copy.deepcopy(model).float()
        with torch.no_grad():
            for name, p in probe.named_parameters():
                if p.dim() > dim:
                    p.copy_(_index_code(p.shape, dim))
        apply_recipe(probe, recipe, example_inputs=map_nested(example_inputs, lambda t: t.float() if t.is_floating_point() else t))
        for name, p in probe.named_parameters():
            if name in shapes and p.dim() > dim and p.shape[dim] != shapes[name][dim]:
                kept[name][dim] = _read_code(p, dim)
        del probe
    return {name: (k[0], k[1]) for name, k in kept.items() if k[0] is not None or k[1] is not None}


def _slice(value: Any, shape: torch.Size, kept: KeptIndices | None) -> Any:
    """A state entry shaped like its parameter, cut to the kept indices; anything else (``step``) as is."""
    if not isinstance(value, Tensor) or kept is None or value.shape != shape:
        return value
    for dim, idx in enumerate(kept):
        if idx is not None:
            value = value.index_select(dim, idx.to(value.device))
    return value.clone()


def transplant_state(
    old: torch.optim.Optimizer,
    new: torch.optim.Optimizer,
    old_params: Mapping[str, nn.Parameter],
    new_params: Mapping[str, nn.Parameter],
    kept: Mapping[str, KeptIndices],
) -> int:
    """Copy ``old``'s per-parameter state into ``new``, matched by parameter name, sliced to the kept units.

    Args:
        old_params / new_params: parameter name -> Parameter, before and after the surgery.
        kept: from :func:`kept_parameter_indices`.

    Returns:
        How many parameters received state.
    """
    name_of = {id(p): name for name, p in new_params.items()}
    moved = 0
    for group in new.param_groups:
        for p in group["params"]:
            name = name_of.get(id(p))
            before = old_params.get(name) if name is not None else None
            state = old.state.get(before) if before is not None else None
            if state:
                new.state[p] = {k: _slice(v, before.shape, kept.get(name)) for k, v in state.items()}
                moved += 1
    return moved


def copy_hyperparameters(old: torch.optim.Optimizer, new: torch.optim.Optimizer) -> bool:
    """Set every param group's hyperparameters (``lr``, momentum, ...) of ``new`` to those of ``old``.

    Returns:
        False (and changes nothing) when the two optimizers have different numbers of groups.
    """
    if len(old.param_groups) != len(new.param_groups):
        return False
    for before, after in zip(old.param_groups, new.param_groups):
        after.update({k: v for k, v in before.items() if k != "params"})
    return True


def carry_over(trainer: Any, old_optimizers: list, old_schedulers: list[dict], old_params: Mapping[str, nn.Parameter],
               new_params: Mapping[str, nn.Parameter], kept: Mapping[str, KeptIndices], *, transplant: bool,
               keep_progress: bool) -> None:
    """Give the trainer's rebuilt optimizers and schedulers the old ones' progress and, if ``transplant``,
    their per-parameter state sliced to the kept units; warn where the two do not correspond."""
    new_optimizers = trainer.optimizers
    if len(new_optimizers) != len(old_optimizers):
        rank_zero_warn("configure_optimizers returned a different number of optimizers after PFA; "
                       "their state and learning rates start afresh.")
        return
    for old, new in zip(old_optimizers, new_optimizers):
        if transplant:
            transplant_state(old, new, old_params, new_params, kept)
        if keep_progress and not copy_hyperparameters(old, new):
            rank_zero_warn("An optimizer's parameter groups changed in number after PFA; its learning rate "
                           "is the one configure_optimizers sets.")
    configs = trainer.lr_scheduler_configs
    if keep_progress and len(configs) == len(old_schedulers):
        for config, state in zip(configs, old_schedulers):
            config.scheduler.load_state_dict(state)
    elif keep_progress:
        rank_zero_warn("configure_optimizers returned a different number of LR schedulers after PFA; "
                       "they restart from zero.")
