"""Layer surgery: apply a :class:`~pfa_lightning.Recipe` to a model, all or nothing."""

from __future__ import annotations

from typing import Any

from torch import nn

from pfa_lightning.blocks import remove_blocks, restore_blocks
from pfa_lightning.errors import PFAError
from pfa_lightning.graph import ModelGraph, ModelState, output_shapes, module_width
from pfa_lightning.tracing import traced
from pfa_lightning.nested import clone_inputs
from pfa_lightning.recipe import Recipe
from pfa_lightning.stats import ResponseStats


def _check_fits(model: nn.Module, recipe: Recipe, graph: ModelGraph) -> dict[str, list[int]]:
    """Removals per channel space (root numbering), or PFAError if the recipe does not fit this model."""
    by_name = {layer.name: layer for layer in recipe.layers}
    prunable = set(graph.prunable_layers())
    for layer in recipe.layers:
        try:
            module = model.get_submodule(layer.name)
        except AttributeError:
            raise PFAError(f"Recipe does not fit the model: it has no layer {layer.name!r}.") from None
        if layer.name not in prunable:
            raise PFAError(f"Recipe does not fit the model: {layer.name!r} is not a prunable layer of it.")
        width = module_width(module)
        if width != layer.original:
            raise PFAError(
                f"Recipe does not fit the model: layer {layer.name!r} has {width} units, the recipe expects "
                f"{layer.original} (was it made for another model, or already applied?)."
            )
        idx = layer.kept_indices
        if not idx or sorted(set(idx)) != list(idx) or idx[0] < 0 or idx[-1] >= width:
            raise PFAError(
                f"Recipe layer {layer.name!r}: kept_indices must be a non-empty ascending list of distinct "
                f"integers in [0, {width}), got {idx[:10]}{'...' if len(idx) > 10 else ''}."
            )
    removals: dict[str, list[int]] = {}
    implied: dict[str, set[int]] = {}
    for space in graph.spaces:
        if space.root not in by_name:
            continue
        gone = by_name[space.root].removed_indices
        removals[space.root] = gone
        for p in space.producers:
            implied.setdefault(p, set()).update(space.index_map[p][u] for u in gone)
    for name in set(by_name) | set(implied):
        if set(by_name[name].removed_indices if name in by_name else ()) != implied.get(name, set()):
            partners = sorted({s.root for s in graph.spaces_of(name)} | {
                p for s in graph.spaces_of(name) for p in s.producers} - {name})
            raise PFAError(
                f"Recipe does not fit the model: {name!r} shares its channels with {', '.join(partners)} "
                "(their outputs are added together), so they must all be listed with matching kept_indices."
            )
    return removals


def _verify(model: nn.Module, recipe: Recipe, inputs: Any, before: Any) -> str:
    """What is wrong with the cut model (an empty string if nothing)."""
    for layer in recipe.layers:
        width = module_width(model.get_submodule(layer.name))
        if width != layer.kept:
            return f"surgery left {layer.name!r} with {width} units instead of {layer.kept}"
    try:
        after = output_shapes(model, inputs)
    except Exception as err:  # the cut model does not run: report it, the caller restores
        return f"the cut model fails to run: {type(err).__name__}: {err}"
    return "" if after == before else f"the output shape changed from {before} to {after}"


def apply_recipe(model: nn.Module, recipe: Recipe, *, example_inputs: Any,
                 compensate_with: ResponseStats | None = None) -> nn.Module:
    """Remove the units the recipe drops, in place, and return ``model``.

    Conv/Linear output units, their BatchNorm (running statistics included), the input channels of
    every consumer (flatten -> Linear features too) and residual-coupled layers are shrunk together
    via Torch-Pruning's dependency graph. Kept units keep their weights, unless
    ``compensate_with`` (statistics collected with ``per_position=True``) is given: then the
    consumers of each layer reached through a linear path absorb the least-squares prediction of
    the removed units from the kept ones (see :mod:`pfa_lightning.compensation`).

    Residual blocks the recipe removes whole (``recipe.blocks``, from ``Footprint(..., depth=True)``) are
    replaced first by what they leave of their stream (:func:`pfa_lightning.blocks.skipped`).

    All or nothing: if the recipe does not fit, or the result fails to run with the same output
    shape, the model is restored exactly and the error raised.
    """
    if not isinstance(recipe, Recipe):
        raise PFAError(f"`recipe` must be a Recipe (see Recipe.from_dict), got {type(recipe).__name__}.")
    inputs = clone_inputs(example_inputs, 2)
    before = output_shapes(model, inputs)
    removed: dict[str, nn.Module] = {}
    state: ModelState | None = None
    try:
        removed = remove_blocks(model, recipe.blocks)  # all or none of them
        graph = traced(model, inputs)
        removals = _check_fits(model, recipe, graph)
        state = ModelState(model)
        if compensate_with is not None:
            from pfa_lightning.compensation import compensate

            compensate(model, recipe, graph, compensate_with)
        graph.prune(removals)
        problem = _verify(model, recipe, inputs, before)
        if problem:
            raise PFAError(f"PFA surgery failed and the model was left untouched: {problem}")
    except BaseException:
        if state is not None:
            state.restore()
        restore_blocks(model, removed)
        raise
    return model


__all__ = ["apply_recipe"]
