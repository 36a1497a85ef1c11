"""Recipes: which units each layer keeps and how they were chosen (applied by :mod:`pfa_lightning.surgery`)."""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Mapping

import numpy as np
from torch import nn

from pfa_lightning.activations import UNKNOWN_NOTE
from pfa_lightning.diagnosis import raise_depth_hint_checked, starved, warn_degenerate, warn_nothing_cut
from pfa_lightning.errors import PFAError
from pfa_lightning.footprint import probe_for
from pfa_lightning.candidates import uncuttable_spaces
from pfa_lightning.graph import module_width
from pfa_lightning.tracing import traced
from pfa_lightning.layers import unit_weights
from pfa_lightning.nested import map_nested
from pfa_lightning.progress import progress_bar
from pfa_lightning.selection import SelectionLike, resolve_selection, select_units, selection_name
from pfa_lightning.spectrum import Spectrum
from pfa_lightning.stats import ResponseStats, pooled_covariance, warn_small
from pfa_lightning.strategies import REGISTRY, Strategy, resolve_strategy
from pfa_lightning.validation import check_choice, check_int, fail, listed

COUPLED_MODES = ("joint", "skip")
RECIPE_VERSION = 1


@dataclass
class LayerRecipe:
    """The decision for one analysed layer.

    Attributes:
        name: module path of the Conv/Linear layer.
        original: its number of units when analysed.
        kept_indices: the units kept, in the layer's numbering at analysis time (ascending).
        group: the channel space it belongs to (named by its first layer); coupled layers share it.
        response: which tensor was analysed (e.g. ``conv -> bn -> ReLU``).
        diagnostics: plain numbers: ``inactive``, ``samples``, and per strategy ``kl``/``energy_kept``.
    """

    name: str
    original: int
    kept_indices: list[int]
    group: str = ""
    response: str = ""
    diagnostics: dict[str, Any] = field(default_factory=dict)

    @property
    def kept(self) -> int:
        return len(self.kept_indices)

    @property
    def removed_indices(self) -> list[int]:
        keep = set(self.kept_indices)
        return [i for i in range(self.original) if i not in keep]


@dataclass
class Recipe:
    """Per-layer widths and kept units, from :func:`make_recipe`; applied by :func:`apply_recipe`.

    Plain data: :meth:`to_dict` gives JSON types and :meth:`from_dict` reads them back, so a
    recipe can be stored with a checkpoint and replayed on a freshly built model.

    Example:
        >>> recipe = make_recipe(model, stats, KL(), example_inputs=x)
        >>> recipe["features.0"].kept, recipe.table()
    """

    layers: list[LayerRecipe]
    strategy: dict[str, Any] = field(default_factory=dict)
    selection: str = "abs_max"
    summary: dict[str, Any] = field(default_factory=dict)  # global diagnostics (threshold, footprint, ...)
    blocks: list[str] = field(default_factory=list)  # residual blocks removed whole (before the widths are cut)

    def __getitem__(self, name: str) -> LayerRecipe:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"Layer {name!r} is not in the recipe; it has: {', '.join(self.names)}.")

    def __iter__(self) -> Iterator[LayerRecipe]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    @property
    def widths(self) -> dict[str, int]:
        return {layer.name: layer.kept for layer in self.layers}

    def to_dict(self) -> dict[str, Any]:
        return _plain({
            "version": RECIPE_VERSION,
            "strategy": self.strategy,
            "selection": self.selection,
            "summary": self.summary,
            "layers": [asdict(layer) for layer in self.layers],
            **({"blocks": self.blocks} if self.blocks else {}),
        })

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Recipe":
        """Read a recipe written by :meth:`to_dict` (e.g. after ``json.loads``)."""
        if not isinstance(data, Mapping) or "layers" not in data:
            raise PFAError("Not a PFA recipe: expected a mapping with a 'layers' list (from Recipe.to_dict()).")
        version = data.get("version", RECIPE_VERSION)
        if version != RECIPE_VERSION:
            raise PFAError(f"Unsupported recipe version {version!r}; this pfa_lightning reads version {RECIPE_VERSION}.")
        layers = []
        for entry in data["layers"]:
            try:
                layers.append(LayerRecipe(
                    name=str(entry["name"]), original=int(entry["original"]),
                    kept_indices=[int(i) for i in entry["kept_indices"]], group=str(entry.get("group", "")),
                    response=str(entry.get("response", "")), diagnostics=dict(entry.get("diagnostics", {})),
                ))
            except (KeyError, TypeError, ValueError) as err:
                raise PFAError(f"Malformed recipe layer entry {entry!r}: {type(err).__name__}: {err}") from None
        blocks = data.get("blocks", [])
        if not isinstance(blocks, list) or not all(isinstance(b, str) for b in blocks):
            raise PFAError(f"Malformed recipe: 'blocks' must be a list of module names, got {blocks!r}.")
        return cls(layers, dict(data.get("strategy", {})), str(data.get("selection", "abs_max")),
                   dict(data.get("summary", {})), list(blocks))

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> "Recipe":
        return cls.from_dict(json.loads(text))

    def table(self, title: str | None = None):
        """A :class:`rich.table.Table` of the recipe: units before/after per layer, and diagnostics."""
        from rich.table import Table

        name = self.strategy.get("name", "?")
        options = ", ".join(f"{k}={v}" for k, v in self.strategy.items() if k != "name")
        table = Table(title=title or f"PFA recipe: {name}{f' ({options})' if options else ''}, selection={self.selection}")
        fold, right = {"overflow": "fold"}, {"justify": "right"}  # names wrap whole, never cut to "net.blocks.0…"
        for col, kw in (("layer", fold), ("group", fold), ("units", right), ("kept", right), ("kept %", right),
                        ("inactive", right), ("diagnostic", {})):
            table.add_column(col, **kw)
        describe = REGISTRY.get(name, Strategy).describe  # the strategy's own words; a generic reading if unknown
        for layer in self.layers:
            d = layer.diagnostics
            diag = describe(d)
            if "note" in d:
                diag += f" ({d['note']})"
            if UNKNOWN_NOTE in layer.response:
                diag += " (read before its activation)"
            table.add_row(layer.name, "" if layer.group == layer.name else layer.group, str(layer.original),
                          str(layer.kept), f"{100 * layer.kept / layer.original:.0f}", str(d.get("inactive", "")), diag)
        total, kept = sum(l.original for l in self.layers), sum(l.kept for l in self.layers)
        if total:
            table.add_row("[bold]total", "", str(total), str(kept), f"{100 * kept / total:.0f}", "", "")
        m = self.summary
        captions = []
        if self.blocks:
            captions.append(f"residual blocks removed ({len(self.blocks)} of {m.get('depth', {}).get('candidates', '?')}): "
                            f"{', '.join(self.blocks)}")
        if "measured_s" in m:  # a latency target: what was timed, and what the latency table predicted
            captions.append(f"latency timed: {1e3 * m['measured_full_s']:.2f} ms -> {1e3 * m['measured_s']:.2f} ms "
                             f"({100 * m['measured_s'] / m['measured_full_s']:.0f}%; the table predicted "
                             f"{1e3 * m['predicted_s']:.2f} ms)")
        table.caption = "\n".join(captions) or None
        return table


def _plain(obj: Any) -> Any:
    """Numpy/torch scalars and containers -> plain Python types (``torch.load(weights_only=True)`` safe)."""
    def leaf(x: Any) -> Any:
        if isinstance(x, np.ndarray):
            return _plain(x.tolist())
        return x.item() if isinstance(x, np.generic) else x

    return map_nested(obj, lambda t: _plain(t.tolist()), other=leaf, sequence=lambda _, items: items,
                      mapping=lambda _, items: {str(k): v for k, v in items.items()})


def check_min_units(min_units: Any) -> int:
    return check_int("min_units", min_units, 1)


def check_round_to(round_to: Any) -> int:
    return check_int("round_to", round_to, 1)


def legal_width(k: int, width: int, step: int) -> int:
    """``k`` units (at least one) raised to the next multiple of ``step``; the full ``width`` beyond it."""
    k = -(-max(1, min(k, width)) // step) * step
    return min(k, width)


def floor_widths(graph: Any, chosen: set[str], min_units: int, coupled: str, round_to: int) -> dict[str, int]:
    """The smallest width of every channel space a decision may cut (its producers among ``chosen``): ``min_units``
    rounded to the space's step; the floor of a footprint target."""
    return {s.root: legal_width(min_units, s.width, s.step(round_to)) for s in graph.spaces
            if not (s.reaches_output or s.fenced or s.tied) and set(s.producers) <= chosen
            and not (coupled == "skip" and s.coupled)}


def make_recipe(
    model: nn.Module,
    stats: ResponseStats,
    strategy: Strategy | str,
    *,
    example_inputs: Any,
    selection: SelectionLike = "max_energy",
    min_units: int = 1,
    coupled: str = "joint",
    round_to: int = 1,
    progress: bool = False,
) -> Recipe:
    """Decide, from collected responses, how many and which units each layer keeps.

    Args:
        model: the model the statistics were collected on (unchanged by this call).
        stats: from :func:`collect_responses`.
        strategy: :class:`KL`, :class:`Energy`, :class:`Footprint`, :class:`Uniform` (or a name: ``"kl"``).
        example_inputs: a batch of model inputs, to trace the model (and count FLOPs).
        selection: which units to keep: :class:`MaxEnergy` (the default, ``"max_energy"``), :class:`AbsMax`
            (the paper's, ``"abs_max"``), :class:`L1Max`;
            the baselines :class:`WeightL1` (largest filter L1 norms, Li et al. 2017) and
            :class:`Random` keep the same number of units; or any selection callable.
        min_units: floor on the units any layer keeps.
        coupled: ``"joint"``: layers whose outputs are added together (residual stages) get one
            decision from their pooled statistics; ``"skip"``: such groups are left whole.
        round_to: every kept width is a multiple of this (or the layer's full width), e.g. 8 for
            hardware-friendly widths; the strategy decides with the rounded widths, so footprint
            targets still hold. Channels split into groups by a grouped convolution or a GroupNorm
            are kept as whole positions: the same channels of every group, a multiple of the group
            count (the group count itself never changes).
        progress: show the trial cuts and the footprint measurements as they go (a large model takes
            minutes).

    Raises:
        PFAError: unknown strategy/selection/coupled, bad ``min_units``, statistics that do not
            match the model, no analysable layer, or an unreachable footprint target.
    """
    strategy = resolve_strategy(strategy)
    chooser = resolve_selection(selection)
    min_units = check_min_units(min_units)
    round_to = check_round_to(round_to)
    check_choice("coupled", coupled, COUPLED_MODES)
    if not isinstance(stats, ResponseStats):
        raise fail("stats", "the ResponseStats returned by collect_responses", type(stats).__name__)
    stats.check_finite()

    reference, removed_blocks, depth = None, [], {}
    if strategy.depth:  # whole residual blocks first, on a copy; the widths are cut on that
        from pfa_lightning.blocks import cut_depth

        reference = model
        model, removed_blocks, depth = cut_depth(model, stats.block_contributions(), strategy, example_inputs,
                                                 lambda g: floor_widths(g, set(stats), min_units, coupled, round_to))
        reference = reference if removed_blocks else None
    graph = traced(model, example_inputs)
    if graph.fenced:
        named = listed(graph.fenced)
        warnings.warn(f"The channels of {named} pass through a reshape -> permute -> reshape (e.g. a channel "
                      "shuffle), which Torch-Pruning cannot map: they are left whole.", stacklevel=2)
    if graph.tied:
        warnings.warn(f"Parameters {', '.join(graph.tied)} are shared (weight tying): cutting the channels they read "
                      "or write would untie them, so those channels are left whole.", stacklevel=2)
    candidates = []
    for space in graph.spaces:
        if space.reaches_output:
            continue
        missing = [p for p in space.producers if p not in stats]
        if missing:
            if len(missing) < len(space.producers):
                warnings.warn(f"Layers {', '.join(p for p in space.producers if p in stats)} share their channels with "
                              f"{', '.join(missing)}, which have no statistics (excluded?): the group is left whole.",
                              stacklevel=2)
            continue
        if coupled == "skip" and space.coupled:
            continue
        candidates.append(space)
    with progress_bar("PFA trial cuts (channels a cut would break)", None, progress) as advance:
        broken = uncuttable_spaces(model, example_inputs, candidates, advance, graph)
    for root, why in broken.items():
        layers = next(s.producers for s in candidates if s.root == root)
        warnings.warn(f"Cutting the channels of {', '.join(layers)} breaks {type(model).__name__} ({why}): "
                      "they are left whole.", stacklevel=2)
    spectra: list[Spectrum] = []
    spaces = []
    for space in (s for s in candidates if s.root not in broken):
        for p in space.producers:
            width = module_width(model.get_submodule(p))
            if stats[p].units != width:
                raise PFAError(
                    f"Statistics for layer {p!r} have {stats[p].units} units but the model's layer has "
                    f"{width}: the statistics were collected on a different model."
                )
        members = [stats[p].select(space.index_map[p]) for p in space.producers]
        spectrum = Spectrum(space.root, pooled_covariance(members), min(s.num_samples for s in members))
        for s in (stats[p] for p in space.producers if stats[p].num_samples <= space.width):
            warn_small(s, space.width)
        # DNIKit's rule: a space is analysed with as many samples as units, kept whole with fewer
        spectrum.frozen = any(stats[p].num_samples < space.width for p in space.producers)
        spectrum.step = space.step(round_to)
        spectra.append(spectrum)
        spaces.append(space)
    if not spectra:
        raise PFAError(
            f"No analysable layer in {type(model).__name__}: the statistics cover none of its prunable "
            f"layers ({', '.join(graph.prunable_layers()) or 'none'})."
        )

    def clamp(k: int, sp: Spectrum) -> int:
        return sp.units if sp.frozen else legal_width(max(k, min_units), sp.units, sp.step)

    metric = strategy.probe_metric
    probe = probe_for(strategy, model, example_inputs, progress, reference) if metric is not None else None
    with progress_bar(f"PFA measuring candidate networks ({metric})", None, progress and probe is not None) as advance:
        def measured(keep: Mapping[str, int]) -> int:
            advance()
            return probe(keep)  # type: ignore[misc]

        if hasattr(probe, "verify"):  # a measured footprint (latency) is checked on the real candidate
            measured.verify = probe.verify  # type: ignore[attr-defined]
        if probe is not None:
            measured.full = probe.full  # type: ignore[attr-defined]  # what a ratio is of
        try:
            decision = strategy.decide(spectra, clamp, measured if probe is not None else None)
        except PFAError as err:  # "or depth=True" only where there are residual blocks to remove
            raise_depth_hint_checked(err, model, example_inputs)
    if all(k >= sp.units for k, sp in zip(decision.counts, spectra)) and not removed_blocks:
        warn_nothing_cut(graph, spectra, broken, stats, min_units, coupled, strategy)

    # one entry per producer; a producer spanning several spaces (added to a concatenation) merges them
    removed: dict[str, set[int]] = {}
    info: dict[str, tuple[list[str], dict[str, Any]]] = {}
    for space, sp, k, diag in zip(spaces, spectra, decision.counts, decision.diagnostics):
        weights = [unit_weights(model.get_submodule(p))[space.index_map[p]] for p in space.producers]
        kept = set(select_units(sp, k, chooser, weights, groups=space.groups, block=space.block).tolist())
        gone = [u for u in range(space.width) if u not in kept]
        for p in space.producers:
            removed.setdefault(p, set()).update(space.index_map[p][u] for u in gone)
            groups, diagnostics = info.setdefault(p, ([], {}))
            groups.append(space.root)
            if not diagnostics:
                note = "too few samples: kept whole" if sp.frozen else f"only {k} kept" if starved(k, sp, space) else ""
                diagnostics.update({"inactive": len(sp.inactive), "samples": sp.num_samples, **diag,
                                    **({"note": note} if note else {})})
    warn_degenerate(spaces, decision.counts, spectra, strategy, (len(removed_blocks), depth.get("candidates", 0)))
    layers: list[LayerRecipe] = []
    for p in (n for n, _ in model.named_modules() if n in removed):
        width = module_width(model.get_submodule(p))
        groups, diagnostics = info[p]
        layers.append(LayerRecipe(
            name=p, original=width, kept_indices=[i for i in range(width) if i not in removed[p]],
            group="+".join(groups), response=stats[p].response, diagnostics=diagnostics,
        ))
    summary = {**decision.summary, **({"depth": depth} if depth else {})}
    return Recipe(layers, strategy.to_dict(), selection_name(chooser), _plain(summary), removed_blocks)


def spectra_of(stats: ResponseStats) -> dict[str, np.ndarray]:
    """Descending eigenvalues of every layer's response covariance (for plots)."""
    out = {}
    for name, s in stats.items():
        out[name] = Spectrum(name, s.covariance(), s.num_samples).eigenvalues
    return out


__all__ = ["COUPLED_MODES", "LayerRecipe", "Recipe", "floor_widths", "legal_width", "make_recipe", "spectra_of"]
