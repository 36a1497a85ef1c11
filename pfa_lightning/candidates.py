"""Which channel spaces and layers are candidates for a cut: the layers a user's ``layers``/``exclude`` choose,
and the spaces whose cut would break the model (found by trial cuts on the model itself, restored exactly)."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

from torch import nn

from pfa_lightning.errors import PFAError
from pfa_lightning.graph import ChannelSpace, ModelGraph, ModelState, output_shapes
from pfa_lightning.nested import clone_inputs


def uncuttable_spaces(model: nn.Module, example_inputs: Any, spaces: Sequence[ChannelSpace],
                      advance: Callable[[], None] = lambda: None, graph: ModelGraph | None = None) -> dict[str, str]:
    """The spaces (by root) whose cut breaks ``model``, with why; ``model`` is left exactly as it was.

    Some code hard-codes a width Torch-Pruning cannot see (a reshape to ``hidden_dim``, a split into
    ``num_heads``): such a space must be left whole. Each trial removes one position from every space
    tried, on the model itself (restored exactly afterwards), and runs it; failing sets are bisected,
    so a model where every cut works costs one trial. ``advance()`` is called after each trial (progress).
    ``graph``: the model's graph if already traced (one trace serves every trial).
    """
    inputs = clone_inputs(example_inputs, 2)
    before = output_shapes(model, inputs)

    graph = graph or ModelGraph(model, inputs)

    def failure(subset: Sequence[ChannelSpace]) -> str | None:
        state = ModelState(model)  # the trial restores it too; this also covers a failure inside the cut
        try:
            with graph.trial({s.root: s.trial_cut() for s in subset}):
                after = output_shapes(model, inputs)
            return None if after == before else f"the output shape changes from {before} to {after}"
        except Exception as err:  # noqa: BLE001 - any failure means: leave these channels alone
            return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
        finally:
            state.restore()
            advance()

    def search(subset: Sequence[ChannelSpace]) -> dict[str, str]:
        why = failure(subset) if subset else None
        if why is None:
            return {}
        if len(subset) == 1:
            return {subset[0].root: why}
        half = len(subset) // 2
        return {**search(subset[:half]), **search(subset[half:])}

    return search([s for s in spaces if s.width // s.groups > s.block])


def match_layers(candidates: Sequence[str], patterns: Iterable[str] | None, what: str) -> set[str]:
    """Names among ``candidates`` matched by glob ``patterns``; each pattern must match something."""
    import fnmatch

    if patterns is None:
        return set(candidates)
    if isinstance(patterns, str):
        patterns = [patterns]
    chosen: set[str] = set()
    for pattern in patterns:
        hits = [c for c in candidates if c == pattern or fnmatch.fnmatchcase(c, pattern)]
        if not hits:
            raise PFAError(
                f"`{what}` entry {pattern!r} matches no prunable layer; prunable layers are: {', '.join(candidates)}."
            )
        chosen.update(hits)
    return chosen


def analysable_layers(model: nn.Module, graph: ModelGraph, layers: Iterable[str] | None,
                      exclude: Iterable[str] | None, verb: str = "analyse") -> tuple[list[str], set[str]]:
    """(prunable layers, the ones ``layers``/``exclude`` choose), or a clear PFAError if there are none."""
    candidates = graph.prunable_layers()
    if not candidates:
        whole = "".join(f" {what}: {', '.join(names)}." for what, names in (
            ("Left whole for weight tying", graph.tied), ("Left whole around a channel shuffle", graph.fenced)) if names)
        raise PFAError(f"{type(model).__name__} has no prunable layer: PFA compresses Conv/Linear layers whose "
                       f"outputs feed other layers (the final classifier is never compressed).{whole}")
    chosen = match_layers(candidates, layers, "layers")
    if exclude is not None:
        chosen -= match_layers(candidates, exclude, "exclude")
    if not chosen:
        raise PFAError(f"`layers`/`exclude` leave no layer to {verb}.")
    return candidates, chosen


__all__ = ["analysable_layers", "match_layers", "uncuttable_spaces"]
